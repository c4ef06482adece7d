"""ONNX Runtime's quantisation tool, as edge-search drives it: the primitives under both the int8
transform (`int8.QuantizeTransform`) and the per-node sensitivity analysis (`sensitivity`).

Pre-processing and naming the nodes (ORT's quantiser excludes nodes by name), the calibration
reader over a task's data, static quantisation with a calibration cache (so one calibration
serves many quantisations), which nodes `keep_fp32` leaves in float32, and the metadata a
quantised deployable carries about them (`edge_search.fp32_nodes`, logged as MLflow tags).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from edge_search.config import DeployConfig, KeepFp32
from edge_search.errors import InputError
from edge_search.tasks.base import Task

log = logging.getLogger(__name__)

FP32_NODES_KEY = "edge_search.fp32_nodes"
"""metadata_props key of a deployable: JSON list of the node names left in float32."""
TAG_LIMIT = 5000
"""MLflow tag values are capped; longer node lists are truncated with a count."""
CALIBRATION_BATCH = 32
"""Samples per calibration batch when the model's batch axis is dynamic (fewer ORT runs)."""
ENTROPY_MAX_SAMPLES = 128
"""Entropy (KL) calibration builds a histogram per tensor and search per tensor; cap its samples."""


def _model_batch(path: Path) -> int | None:
    """The fixed batch size of the model's first graph input, or None when it is dynamic."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
        return None
    return None


class TaskCalibrationReader:
    """`CalibrationDataReader` over `task.calibration_batches` (ORT calls `get_next` until None)."""

    def __init__(self, task: Task, n: int, batch_size: int, *, fixed_batch: bool = False) -> None:
        self._task, self._n, self._batch, self._fixed = task, n, batch_size, fixed_batch
        self._it: Iterator[dict[str, np.ndarray]] = task.calibration_batches(n, batch_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next feed, or None when the calibration samples are used up."""
        feed = next(self._it, None)
        if feed is not None and self._fixed and any(v.shape[0] != self._batch for v in feed.values()):
            return None  # a short last batch cannot feed a model with a fixed batch size
        return feed

    def rewind(self) -> None:
        """Start again from the first sample (ORT's calibrators may read the data twice)."""
        self._it = self._task.calibration_batches(self._n, self._batch)


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


def quantize_static_model(src: Path, dst: Path, deploy: DeployConfig, task: Task, exclude: list[str],
                          calibration_cache: Path | None = None) -> None:
    """int8-static quantisation of a pre-processed, named model with `exclude` left in float32.

    `calibration_cache`: ORT's calibration cache file; read when it exists (no calibration),
    else written by the calibration (used by `edge_search.transforms.quantize.sensitivity` to calibrate once).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[deploy.calibration_method]
    n = deploy.calibration_size
    if deploy.calibration_method == "entropy":
        n = min(n, ENTROPY_MAX_SAMPLES)
    qdq = deploy.quant_format == "qdq"
    fixed = _model_batch(src)
    reader = TaskCalibrationReader(task, n, fixed or CALIBRATION_BATCH, fixed_batch=fixed is not None)
    if not any(True for _ in task.calibration_batches(1, 1)):
        raise InputError(f"int8-static needs calibration data; task '{task.name}' provides none")
    # ORT's histogram calibrators print progress to stdout; keep it out of the CLI's output.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        quantize_static(
            str(src), str(dst), reader,
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            per_channel=deploy.per_channel, reduce_range=deploy.reduce_range,
            activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method, op_types_to_quantize=OP_TYPES[deploy.quantize_op_types],
            nodes_to_exclude=exclude, calibration_cache_path=calibration_cache)
    if captured.getvalue():
        log.debug("calibration output: %s", captured.getvalue().strip())


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
