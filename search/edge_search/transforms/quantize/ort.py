"""ONNX Runtime's quantisation tool, as edge-search drives it: the primitives under both the int8
transform (`int8.QuantizeTransform`) and the per-node sensitivity analysis (`sensitivity`); calibration is
`calibration`, the int8-static recipe `static`.

Pre-processing and naming the nodes (ORT's quantiser excludes nodes by name), which nodes
`keep_fp32` leaves in float32, and the metadata a quantised deployable carries about them
(`edge_search.fp32_nodes`, logged as MLflow tags).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import onnx

from edge_search.config import KeepFp32

log = logging.getLogger(__name__)

FP32_NODES_KEY = "edge_search.fp32_nodes"
"""metadata_props key of a deployable: JSON list of the node names left in float32."""
TAG_LIMIT = 5000
"""MLflow tag values are capped; longer node lists are truncated with a count."""
def preprocess(src: Path, dst: Path) -> Path:
    """Run ORT's `quant_pre_process` (shape inference + optimisation); return the model to quantise.

    It fails on some models (e.g. symbolic shape inference on unusual ops); the quantiser then
    works on the original model, which still quantises correctly, only with fewer fusions.
    """
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as err:
        log.warning("quant_pre_process failed on %s, quantising the model as is: %s", src, err)
        return src
    return dst


WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
"""Op types whose first/last occurrence `keep_fp32: first_last` keeps in float32."""
OP_TYPES: dict[str, list[str] | None] = {"all": None, "conv": ["Conv"], "matmul": ["MatMul", "Gemm"]}
"""`quantize_op_types` -> ORT's `op_types_to_quantize` (None: ORT's default set)."""


def name_nodes(path: Path) -> onnx.ModelProto:
    """Load `path` and give every unnamed node a unique name (ORT's quantiser excludes by name)."""
    model = onnx.load(str(path))
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_es{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def nodes_kept_fp32(model: onnx.ModelProto, keep: KeepFp32) -> list[str]:
    """Names of the nodes `keep` leaves unquantised (graph order)."""
    if keep == "none":
        return []
    inits = {i.name: i for i in model.graph.initializer}
    out: list[str] = []
    if keep in ("first_last", "first_last_depthwise"):
        weighted = [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS]
        out.extend(dict.fromkeys(weighted[:1] + weighted[-1:]))
    if keep in ("depthwise", "first_last_depthwise"):
        for node in model.graph.node:
            if node.op_type != "Conv" or node.name in out:
                continue
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            w = inits.get(node.input[1]) if len(node.input) > 1 else None
            if group > 1 and w is not None and len(w.dims) == 4 and w.dims[1] == 1:
                out.append(node.name)
    return out


# -- what a deployable kept in float32 -----------------------------------------------------------------

def record_fp32_nodes(path: Path, nodes: list[str]) -> None:
    """Write `nodes` into `path`'s metadata_props under `FP32_NODES_KEY` (in place)."""
    model = onnx.load(str(path))
    props = [p for p in model.metadata_props if p.key != FP32_NODES_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=FP32_NODES_KEY, value=json.dumps(nodes))
    onnx.save(model, str(path))


def fp32_nodes_of(path: Path) -> list[str] | None:
    """The node names a deployable records as kept in float32; None when it records nothing."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not an ONNX file (or unreadable): nothing recorded
        return None
    for p in model.metadata_props:
        if p.key == FP32_NODES_KEY:
            value = json.loads(p.value)
            return [str(v) for v in value] if isinstance(value, list) else None
    return None


def fp32_node_tags(path: Path) -> dict[str, str]:
    """MLflow tags for a deployable: `fp32_nodes` (comma-separated) and `fp32_node_count`; {} if none."""
    nodes = fp32_nodes_of(path)
    if nodes is None:
        return {}
    text = ",".join(nodes)
    if len(text) > TAG_LIMIT:
        text = text[:TAG_LIMIT - 40].rsplit(",", 1)[0] + f",... ({len(nodes)} in all)"
    return {"fp32_nodes": text, "fp32_node_count": str(len(nodes))}


# -- presentation -------------------------------------------------------------------------------------
