"""Node classification and a graph-only cost model (FLOPs, bytes, op class; nothing is executed).

Every node is put in one of six classes, because devices differ by class, not by model:

| class | ops | bound by | work unit |
|---|---|---|---|
| ``conv_kxk`` | Conv with a kernel larger than 1x1 (grouped convs included) | compute | FLOPs |
| ``pointwise`` | 1x1 Conv | compute | FLOPs |
| ``gemm`` | Gemm, MatMul (and their int8 forms) | compute | FLOPs |
| ``depthwise`` | Conv with one group per input channel | memory | bytes |
| ``elementwise`` | activations, Add/Mul, normalisation, Softmax, (De)QuantizeLinear | memory | bytes |
| ``other`` | pooling, reductions, reshape/transpose/concat, layout reorders | memory | bytes |

The precision of a node is int8 when it is a quantised kernel (QLinearConv, QGemm, ConvInteger, …)
or, in a QDQ graph, when its weight or input comes through a DequantizeLinear; fp16 when its
output is float16; fp32 otherwise.

`graph_costs` runs ONNX shape inference; dimensions it cannot resolve count as 1 (give concrete
input shapes to avoid that). `classify_profiled` maps the node names ONNX Runtime reports in its
profile (which fusion and layout passes rename) back to the original graph.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper, shape_inference

OpClass = Literal["conv_kxk", "depthwise", "pointwise", "gemm", "elementwise", "other"]
NodePrecision = Literal["fp32", "fp16", "int8"]

COMPUTE_CLASSES: frozenset[str] = frozenset({"conv_kxk", "pointwise", "gemm"})


def class_group(op_class: str) -> Literal["compute", "memory"]:
    """'compute' for classes whose time follows FLOPs, 'memory' for those that follow bytes moved."""
    return "compute" if op_class in COMPUTE_CLASSES else "memory"


_CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NchwcConv", "ConvTranspose"}
_GEMM_OPS = {
    "Gemm",
    "MatMul",
    "QGemm",
    "QLinearMatMul",
    "MatMulInteger",
    "FusedMatMul",
    "FusedGemm",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "Attention",
    "MultiHeadAttention",
    "QAttention",
    "MatMulNBits",
    "Einsum",
}
_ELEMENTWISE_OPS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Erf",
    "Gelu",
    "FastGelu",
    "BiasGelu",
    "QuickGelu",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Neg",
    "Abs",
    "Softmax",
    "LogSoftmax",
    "BatchNormalization",
    "LayerNormalization",
    "SkipLayerNormalization",
    "SimplifiedLayerNormalization",
    "InstanceNormalization",
    "Cast",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "Where",
    "Equal",
    "Min",
    "Max",
    "Reciprocal",
    "Mish",
    "Swish",
    "PRelu",
    "Elu",
    "Selu",
    "Softplus",
    "BiasAdd",
}
_INT8_OPS = {
    "QLinearConv",
    "ConvInteger",
    "QGemm",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QLinearAdd",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
    "QuantizeLinear",
    "DynamicQuantizeLinear",
    "DequantizeLinear",
}
_ELEM_BYTES = {1: 4, 10: 2, 11: 8, 7: 8, 6: 4, 5: 2, 3: 1, 2: 1, 4: 2, 9: 1, 16: 2}


@dataclass(frozen=True)
class NodeCost:
    """One node's class, precision and graph-level work."""

    name: str
    op_type: str
    op_class: OpClass
    precision: NodePrecision
    flops: float
    bytes: float

    @property
    def work(self) -> float:
        """FLOPs for compute-bound classes, bytes for memory-bound ones (the unit of its class rate)."""
        return self.flops if class_group(self.op_class) == "compute" else self.bytes


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    """The original graph with inferred shapes, indexed by node name and tensor name."""

    def __init__(self, model: onnx.ModelProto) -> None:
        with contextlib.suppress(Exception):
            model = shape_inference.infer_shapes(model, data_prop=True)
        g = model.graph
        self.nodes = list(g.node)
        self.by_name = {n.name: n for n in self.nodes if n.name}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.init = {t.name: t for t in g.initializer}
        self.shape: dict[str, tuple[int, ...]] = {}
        self.dtype: dict[str, int] = {}
        partial = set()  # a dimension past the batch that inference left unknown
        for vi in [*g.input, *g.output, *g.value_info]:
            tt = vi.type.tensor_type
            self.dtype[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 0 for d in tt.shape.dim]
                self.shape[vi.name] = tuple(d or 1 for d in dims)
                if 0 in dims[1:]:
                    partial.add(vi.name)
        self.unresolved = [n.output[0] for n in g.node if n.op_type in _CONV_OPS | _GEMM_OPS and n.output
                           and (n.output[0] in partial or n.output[0] not in self.shape)]
        """Outputs of compute nodes whose shape inference could not size (e.g. padding computed from
        ``Shape`` at run time, as TF-style "same" padding exports do): their work would count as 1 x 1."""
        for t in g.initializer:
            self.shape[t.name] = tuple(int(d) for d in t.dims)
            self.dtype[t.name] = t.data_type
        # nodes sorted by name length, longest first, for prefix matching of renamed nodes
        self._names = sorted(self.by_name, key=len, reverse=True)
        self._tensors = sorted(self.producer, key=len, reverse=True)

    def numel(self, tensor: str) -> int:
        return int(np.prod(self.shape.get(tensor, (1,)), dtype=np.int64)) if tensor else 0

    def nbytes(self, tensor: str) -> int:
        return self.numel(tensor) * _ELEM_BYTES.get(self.dtype.get(tensor, 1), 4) if tensor else 0

    def weight_shape(self, node: onnx.NodeProto) -> tuple[int, ...] | None:
        """Shape of a conv/gemm weight, looking through DequantizeLinear in QDQ graphs."""
        idx = 3 if node.op_type == "QLinearConv" else 1
        if len(node.input) <= idx:
            return None
        w = node.input[idx]
        prod = self.producer.get(w)
        if prod is not None and prod.op_type == "DequantizeLinear":
            w = prod.input[0]
        return self.shape.get(w)

    def dequantized_input(self, node: onnx.NodeProto) -> bool:
        """True when an input of `node` comes from a DequantizeLinear (QDQ int8 graph)."""
        return any(
            (p := self.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input
        )

    def match(self, profiled_name: str) -> onnx.NodeProto | None:
        """The original node behind a name from ORT's profile (renamed by fusion or layout passes)."""
        if profiled_name in self.by_name:
            return self.by_name[profiled_name]
        for n in self._names:
            if profiled_name.startswith(n):
                return self.by_name[n]
        for t in self._tensors:
            if profiled_name.startswith(t):
                return self.producer[t]
        return None

    def upstream_conv(self, node: onnx.NodeProto, depth: int = 4) -> onnx.NodeProto | None:
        """Walk back from a fused activation to the Conv/Gemm it was fused into."""
        cur: onnx.NodeProto | None = node
        for _ in range(depth):
            if cur is None:
                return None
            if cur.op_type in _CONV_OPS or cur.op_type in _GEMM_OPS:
                return cur
            cur = self.producer.get(cur.input[0]) if cur.input else None
        return None


def _conv_class(g: _Graph, node: onnx.NodeProto) -> OpClass:
    group_attr: Any = _attr(node, "group", 1)
    group = int(group_attr)
    wshape = g.weight_shape(node)
    kernel_attr: Any = _attr(node, "kernel_shape", wshape[2:] if wshape else ())
    kernel = tuple(int(k) for k in kernel_attr)
    if group > 1 and wshape is not None and wshape[1] == 1:
        return "depthwise"
    if group > 1 and wshape is None:
        return "depthwise"
    if kernel and all(k == 1 for k in kernel):
        return "pointwise"
    return "conv_kxk"


def _class_of(g: _Graph | None, node: onnx.NodeProto | None, op_type: str) -> OpClass:
    if op_type in _CONV_OPS or (node is not None and node.op_type in _CONV_OPS):
        if g is not None and node is not None and node.op_type in _CONV_OPS:
            return _conv_class(g, node)
        return "conv_kxk"
    if op_type in _GEMM_OPS:
        return "gemm"
    if op_type in _ELEMENTWISE_OPS:
        return "elementwise"
    return "other"


def _precision_of(g: _Graph, node: onnx.NodeProto | None, op_type: str) -> NodePrecision:
    if op_type in _INT8_OPS:
        return "int8"
    if node is None:
        return "fp32"
    if node.op_type in _INT8_OPS or (node.op_type in _CONV_OPS | _GEMM_OPS and g.dequantized_input(node)):
        return "int8"
    out = node.output[0] if node.output else ""
    if g.dtype.get(out) == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32"


def _flops_bytes(g: _Graph, node: onnx.NodeProto, op_class: OpClass) -> tuple[float, float]:
    out = node.output[0] if node.output else ""
    nbytes = float(sum(g.nbytes(i) for i in node.input) + sum(g.nbytes(o) for o in node.output))
    if op_class in ("conv_kxk", "pointwise", "depthwise"):
        w = g.weight_shape(node)
        k = int(np.prod(w[1:])) if w else 1
        return 2.0 * g.numel(out) * k, nbytes
    if op_class == "gemm":
        a = g.shape.get(node.input[0], ()) if node.input else ()
        kdim = a[-1] if a else 1
        trans_a: Any = _attr(node, "transA", 0)
        if node.op_type == "Gemm" and int(trans_a) and len(a) == 2:
            kdim = a[0]
        return 2.0 * g.numel(out) * kdim, nbytes
    if op_class == "elementwise":
        return float(g.numel(out)), nbytes
    return float(max((g.numel(i) for i in node.input[:1]), default=0)), nbytes


def _with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None) -> onnx.ModelProto:
    if not shapes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in model.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[vi.name], strict=False):
                d.Clear()
                d.dim_value = int(v)
    return model


def load_graph(model_path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> _Graph:
    """The model's graph with inferred shapes (weights are not needed, only their shapes).

    Where ONNX shape inference cannot size a compute node's output, the sizes come from ONNX
    Runtime's symbolic shape inference (`_symbolic_shapes`: it knows the com.microsoft ops of
    QOperator graphs, after which ONNX's own inference stops), else from the graph as ONNX Runtime
    folds it (`_folded_shapes`: shapes computed at run time from ``Shape``)."""
    model = onnx.load(str(model_path), load_external_data=False)
    g = _Graph(_with_shapes(model, shapes))
    for source in (lambda: _symbolic_shapes(model, shapes), lambda: _folded_shapes(Path(model_path), shapes)):
        if not g.unresolved:
            break
        for name, shape in source().items():
            if name not in g.shape or name in g.unresolved or 1 in g.shape[name][1:]:
                g.shape[name] = shape
        g.unresolved = [t for t in g.unresolved if t not in g.shape or 1 in g.shape[t][2:]]
    return g


def _fix_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None) -> onnx.ModelProto:
    """A copy of `model` whose inputs have the dimensions of `shapes`, symbolic ones at 1."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in model.graph.input:
        fixed = (shapes or {}).get(vi.name)
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if fixed is not None and i < len(fixed):
                d.Clear()
                d.dim_value = int(fixed[i])
            elif not d.HasField("dim_value") or d.dim_value <= 0:
                d.Clear()
                d.dim_value = 1
    return model


def _known_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out = {}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value for d in tt.shape.dim]
            if dims and all(d > 0 for d in dims):
                out[vi.name] = tuple(dims)
    return out


def _symbolic_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from ONNX Runtime's symbolic shape inference (the tool ONNX Runtime ships for
    models ONNX's inference cannot size), inputs fixed as in `_fix_inputs`; empty where it fails."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(_fix_inputs(model, shapes), auto_merge=True,
                                                       guess_output_rank=True)
    except Exception:  # an op it does not know: the next source is tried
        return {}
    return _known_shapes(inferred) if inferred is not None else {}


def _folded_shapes(model_path: Path, shapes: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the model after ONNX Runtime's basic optimisations (constant folding of
    ``Shape``-computed paddings and reshapes, inputs fixed as in `_fix_inputs`), by tensor name;
    empty where ONNX Runtime cannot load the model.

    ONNX's own data propagation does not fold these subgraphs (ConstantOfShape, Transpose, Reshape of
    data), ONNX Runtime's constant folding does; only shapes are taken from the folded graph, so the
    node count and classes stay those of the original graph."""
    import tempfile

    import onnxruntime as ort

    model = _fix_inputs(onnx.load(str(model_path)), shapes)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            folded = shape_inference.infer_shapes(onnx.load(so.optimized_model_filepath, load_external_data=False))
        except Exception:  # a model ORT cannot load keeps the inferred shapes it has
            return {}
    return _known_shapes(folded)


def graph_costs(model_path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> list[NodeCost]:
    """Class, precision, FLOPs and bytes of every node of the original graph (no execution).

    QuantizeLinear/DequantizeLinear pairs that only exist to mark a QDQ conv as int8 are kept as
    element-wise int8 nodes: they cost real time where the runtime does not fuse them.
    """
    g = load_graph(model_path, shapes)
    costs = []
    for node in g.nodes:
        if node.op_type in ("Constant", "Shape", "Identity"):
            continue
        if node.op_type == "DequantizeLinear" and node.input and node.input[0] in g.init:
            continue  # weight dequantisation is folded into the kernel
        op_class = _class_of(g, node, node.op_type)
        prec = _precision_of(g, node, node.op_type)
        flops, nbytes = _flops_bytes(g, node, op_class)
        costs.append(NodeCost(node.name, node.op_type, op_class, prec, flops, nbytes))
    return costs


def classify_profiled(g: _Graph, name: str, op_type: str) -> tuple[OpClass, NodePrecision, float]:
    """Class, precision and graph work of a node from ORT's profile (name as ORT reports it).

    ORT renames nodes it fuses or re-lays-out (``/pw/Conv_token_7``, ``/Relu_output_0_nchwc``);
    the longest original node or tensor name that prefixes the reported name is taken, and, when
    the reported op is a convolution, walked back through fused activations to the Conv itself.
    The returned work is the matched node's FLOPs or bytes (0 when nothing matched).
    """
    base = re.sub(r"_kernel_time$", "", name)
    node = g.match(base)
    if node is not None and op_type in _CONV_OPS | _GEMM_OPS and node.op_type not in _CONV_OPS | _GEMM_OPS:
        node = g.upstream_conv(node)
    op_class = _class_of(g, node, op_type)
    prec = _precision_of(g, node, op_type)
    work = 0.0
    if node is not None:
        flops, nbytes = _flops_bytes(g, node, op_class)
        work = flops if class_group(op_class) == "compute" else nbytes
    return op_class, prec, work


def summarize_costs(costs: list[NodeCost]) -> dict[str, dict[str, float]]:
    """Per '<precision>.<class>': node count, FLOPs, bytes and work."""
    out: dict[str, dict[str, float]] = {}
    for c in costs:
        zero = {"nodes": 0.0, "flops": 0.0, "bytes": 0.0, "work": 0.0}
        d = out.setdefault(f"{c.precision}.{c.op_class}", zero)
        d["nodes"] += 1
        d["flops"] += c.flops
        d["bytes"] += c.bytes
        d["work"] += c.work
    return out


def model_precision(costs: list[NodeCost]) -> NodePrecision:
    """The precision most of the model's compute runs in."""
    by: dict[NodePrecision, float] = {}
    for c in costs:
        if class_group(c.op_class) == "compute":
            by[c.precision] = by.get(c.precision, 0.0) + c.flops
    return max(by, key=lambda k: by[k]) if by else "fp32"


__all__ = [
    "NodeCost",
    "OpClass",
    "class_group",
    "classify_profiled",
    "graph_costs",
    "load_graph",
    "model_precision",
    "summarize_costs",
]
