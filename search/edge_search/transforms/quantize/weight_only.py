"""Weight-only int4/int8 quantisation (`int4-weight`, `int8-weight`) with ONNX Runtime's
`MatMulNBitsQuantizer`: MatMul weights become blocked 4/8-bit MatMulNBits nodes (activations stay
float32). ORT supports this for MatMul only (not Gemm or Conv), i.e. for transformer-style models.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx

from edge_search.config import DeployConfig
from edge_search.tasks.base import Task
from edge_search.transforms.base import Transform

log = logging.getLogger(__name__)


class WeightOnlyQuantizeTransform(Transform):
    """int4/int8 weight-only quantisation of MatMul weights (ORT's MatMulNBits; activations fp32)."""

    name = "weight-only"

    def applies(self, deploy: DeployConfig) -> bool:
        """When `precision` is `int4-weight` or `int8-weight`."""
        return deploy.weight_only_bits is not None

    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """`precision` (the bit width) and `weight_only_block_size`."""
        return deploy.model_dump(include={"precision", "weight_only_block_size"})

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Quantise MatMul weights in blocks of `weight_only_block_size` (symmetric) into `dst`.

        Weights whose reduction axis is not a multiple of the block size are padded by ORT; a model
        without constant-weight MatMuls comes out unchanged (logged).
        """
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        bits = deploy.weight_only_bits
        if bits is None:
            raise ValueError(f"precision {deploy.precision} is not a weight-only precision")
        model = onnx.load(str(src))
        config = DefaultWeightOnlyQuantConfig(block_size=deploy.weight_only_block_size, is_symmetric=True,
                                              bits=bits)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=deploy.weight_only_block_size,
                                         is_symmetric=True, algo_config=config)
        quantizer.process()
        out = quantizer.model.model
        n = sum(1 for node in out.graph.node if node.op_type == "MatMulNBits")
        if n == 0:
            log.info("weight-only %d-bit: %s has no MatMul with constant weights; unchanged", bits, src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(out, str(dst))
