"""fp16 models on a host without fp16 arithmetic: profile their float32 twin, count it as fp16.

A float16 model (`transforms.precision`) profiled on an x86 host runs its fp16 nodes through casts
to float32 kernels (ONNX Runtime's CPU provider has few fp16 kernels): that host time describes the
host's emulation of fp16, not the work of the graph, and the profiled node names no longer match
the graph (so every node was counted as fp32 and carried with fp32 rates). The emulator instead
profiles the same graph in float32 (`fp32_twin`: every float16 tensor, cast and value type turned
back to float32) and labels the fp32 classes of that profile fp16 (`as_fp16`), so the target's
fp16 rates (a GPU's) carry them. What the twin cannot say: nodes the conversion kept in float32
(ONNX Runtime's fp16 block list: Resize, TopK, ...) are counted as fp16 too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edge_search.devices.emulation.carry import ClassTime, HostBreakdown


def is_fp16_model(path: Path) -> bool:
    """True when the model holds float16 weights (an fp16 deployable)."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def _to_fp32(t: onnx.TensorProto) -> onnx.TensorProto:
    if t.data_type != TensorProto.FLOAT16:
        return t
    arr = numpy_helper.to_array(t).astype(np.float32)
    return numpy_helper.from_array(arr, t.name)


def _graph_to_fp32(g: onnx.GraphProto) -> None:
    for i, t in enumerate(g.initializer):
        g.initializer[i].CopyFrom(_to_fp32(t))
    for vi in [*g.input, *g.output, *g.value_info]:
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT16:
            tt.elem_type = TensorProto.FLOAT
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
            elif a.type == onnx.AttributeProto.TENSOR:
                a.t.CopyFrom(_to_fp32(a.t))
            elif a.type == onnx.AttributeProto.GRAPH:
                _graph_to_fp32(a.g)


def fp32_twin(src: Path, dst: Path) -> Path:
    """Write the float32 twin of the fp16 model `src` to `dst` (same nodes and names)."""
    model = onnx.load(str(src), load_external_data=False)
    _graph_to_fp32(model.graph)
    onnx.save(model, str(dst))
    return dst


def as_fp16(bd: HostBreakdown) -> HostBreakdown:
    """The twin's breakdown with its fp32 classes counted as fp16 (int8 classes left alone)."""
    merged: dict[tuple[str, str], list[float]] = {}
    for c in bd.classes:
        prec = "fp16" if c.precision == "fp32" else c.precision
        slot = merged.setdefault((prec, c.op_class), [0.0, 0.0, 0.0])
        slot[0] += c.host_ms
        slot[1] += c.work
        slot[2] += c.nodes
    classes = tuple(ClassTime(p, k, v[0], v[1], int(v[2])) for (p, k), v in sorted(merged.items()))
    return replace(bd, classes=classes)


__all__ = ["as_fp16", "fp32_twin", "is_fp16_model"]
