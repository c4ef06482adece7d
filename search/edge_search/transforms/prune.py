"""Unstructured magnitude pruning of an ONNX model's weight initializers.

For tasks that cannot prune in their training framework (a bring-your-own ONNX model): no
fine-tuning is possible, so this only zeroes the smallest weights. Trainable tasks prune in
PyTorch instead (`Task.prune`), where channels can really be removed and the net fine-tuned.
ONNX Runtime has no pruning tool and torch.nn.utils.prune works on torch modules, hence the few
lines of numpy here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edge_search.config import DeployConfig
from edge_search.tasks.base import Task
from edge_search.transforms.base import Transform

WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {"Conv": (1,), "Gemm": (1,), "MatMul": (0, 1)}
"""Op type -> input positions that hold weights (biases, Gemm's input 2, are never pruned)."""
METADATA_KEY = "edge_search.prune"


def magnitude_prune_array(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of `weights` with the ceil(sparsity*n) smallest magnitudes set to zero."""
    flat = weights.reshape(-1).copy()
    k = min(flat.size, math.ceil(sparsity * flat.size - 1e-9))
    if k > 0:
        # argpartition, not a threshold: ties at the threshold would otherwise prune too many/few.
        idx = np.argpartition(np.abs(flat), k - 1)[:k]
        flat[idx] = 0
    return flat.reshape(weights.shape)


def weight_initializers(model: onnx.ModelProto) -> list[str]:
    """Names of float initializers used as weights of Conv/Gemm/MatMul nodes, in graph order."""
    inits = {init.name: init for init in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        for pos in WEIGHT_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in inits and node.input[pos] not in names:
                init = inits[node.input[pos]]
                if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                      onnx.TensorProto.DOUBLE) and len(init.dims) >= 2:
                    names.append(init.name)
    return names


def magnitude_prune_model(model: onnx.ModelProto, sparsity: float) -> dict[str, float]:
    """Prune each weight initializer of `model` in place (per tensor); return zero share per tensor."""
    targets = set(weight_initializers(model))
    report: dict[str, float] = {}
    for init in model.graph.initializer:
        if init.name not in targets:
            continue
        pruned = magnitude_prune_array(numpy_helper.to_array(init), sparsity)
        init.CopyFrom(numpy_helper.from_array(pruned, init.name))
        report[init.name] = float((pruned == 0).mean())
    return report


class MagnitudePruneTransform(Transform):
    """Zero the smallest `sparsity` share of each Conv/Gemm/MatMul weight tensor (per tensor)."""

    name = "magnitude-prune"

    def applies(self, deploy: DeployConfig) -> bool:
        """When `sparsity` > 0 (structured `channel_prune` needs a trainable task)."""
        return deploy.sparsity > 0

    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """`sparsity`."""
        return deploy.model_dump(include={"sparsity"})

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Write the pruned model to `dst`, with what was done in its `metadata_props`."""
        model = onnx.load(str(src))
        report = magnitude_prune_model(model, deploy.sparsity)
        total = sum(report.values()) / len(report) if report else 0.0
        meta = {p.key: p.value for p in model.metadata_props}
        meta[METADATA_KEY] = json.dumps({
            "method": "magnitude-unstructured-per-tensor", "sparsity": deploy.sparsity,
            "tensors": len(report), "mean_zero_share": round(total, 6)}, sort_keys=True)
        onnx.helper.set_model_props(model, meta)
        dst.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(dst))
