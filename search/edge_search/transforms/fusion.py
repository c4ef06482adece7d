"""Transformer graph fusions: ONNX Runtime's transformer optimiser (`onnxruntime.transformers.optimizer`,
what Olive's transformers-optimization pass runs) fuses attention, LayerNorm (+ skip connection)
and GELU subgraphs into ORT's contrib ops (Attention, SkipLayerNormalization, BiasGelu/FastGelu).

It runs before any precision change, so int8 quantises the fused ops as units and an fp32 trial
with the knob set is the fused fp32 model (a fair baseline).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_search.config import DeployConfig
from edge_search.errors import InputError
from edge_search.tasks.base import Task
from edge_search.transforms.base import Transform

log = logging.getLogger(__name__)


def fuse_transformer(src: Path, dst: Path, model_type: str) -> dict[str, int]:
    """Write `src` with ORT's transformer fusions for `model_type` to `dst`; returns the fused-op
    counts ORT reports (attention heads and hidden size are detected from the graph)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(src), model_type=model_type, num_heads=0, hidden_size=0, opt_level=0)
    counts = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(dst))
    log.info("transformer fusion (%s): %s", model_type, counts or "nothing fused")
    return counts


class TransformerFusionTransform(Transform):
    """ORT's transformer fusions for the model family `transformer_fusion` names."""

    name = "transformer-fusion"

    def applies(self, deploy: DeployConfig) -> bool:
        """When `transformer_fusion` is not `none`."""
        return deploy.transformer_fusion != "none"

    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """`transformer_fusion`, only when set (keys of unfused models stay as they were)."""
        return {"transformer_fusion": deploy.transformer_fusion} if self.applies(deploy) else {}

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Write the fused model to `dst`; `InputError` when the optimiser finds nothing to fuse."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        counts = fuse_transformer(src, dst, deploy.transformer_fusion)
        if not counts:
            raise InputError(f"transformer_fusion={deploy.transformer_fusion}: ONNX Runtime's optimiser found "
                             f"no {deploy.transformer_fusion} subgraph to fuse in {src.name}")
