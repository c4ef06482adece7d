"""fp16: convert an ONNX model's float tensors to float16 (ONNX Runtime's transformer tools).

Inputs and outputs stay float32 (`keep_io_types`), so the same data and measurement feeds work;
casts are inserted at the boundaries. Ops ONNX Runtime lists as unsafe in fp16 (its
`DEFAULT_OP_BLOCK_LIST`: Resize, TopK, NonMaxSuppression, ...) stay float32. fp16 pays off only on
hardware with fp16 arithmetic (a GPU, ARMv8.2+ CPUs); `check_deploy` rejects it on a device whose
profile does not list fp16, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from edge_search.config import DeployConfig
from edge_search.tasks.base import Task
from edge_search.transforms.base import Transform

METADATA_KEY = "edge_search.precision"


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of `model` with float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=True)
    return converted


class Fp16Transform(Transform):
    """Convert weights and activations to float16, keeping float32 model inputs and outputs."""

    name = "fp16"

    def applies(self, deploy: DeployConfig) -> bool:
        """When `precision` is `fp16`."""
        return deploy.precision == "fp16"

    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """`precision`."""
        return deploy.model_dump(include={"precision"})

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Write the float16 model to `dst`, with what was done in its `metadata_props`."""
        model = convert_fp16(onnx.load(str(src)))
        meta = {p.key: p.value for p in model.metadata_props}
        meta[METADATA_KEY] = json.dumps({"method": "onnxruntime.transformers.float16", "keep_io_types": True})
        onnx.helper.set_model_props(model, meta)
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(dst))
