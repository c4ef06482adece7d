"""int8-static in two steps: prepare the float model once (graph techniques + calibration), then
quantise it with ONNX Runtime as often as needed (the transform once; the sensitivity analysis
once per candidate), always from the same prepared model and ranges.

`prepare_static`, in order, each step where its knob asks for it:
1. ORT's pre-processing (shape inference, basic optimisation) and node naming (`ort`);
2. `cross_layer_equalization` (`equalization`), `smooth_quant` (`smoothing`): exact float rewrites;
3. calibration (`calibration`): ranges, and the tensors that cannot be calibrated;
4. `bias_correction` (`bias_correction`): ORT quantises once to learn the deployed weights, then
   the biases absorb the mean error, and the corrected model is calibrated again.

`quantize_prepared` then runs `quantize_static` on the prepared model with the cached ranges; the
layers it keeps in float32 get their biases from before the correction back, and are shielded from
ONNX Runtime's load-time weight quantisation (`float_islands`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edge_search.config import DeployConfig
from edge_search.tasks.base import Task
from edge_search.transforms.quantize.calibration import (
    Calibration,
    FeedReader,
    _model_batch,
    batch_plan,
    calibrate,
    calibration_samples,
    nodes_touching,
)
from edge_search.transforms.quantize.ort import OP_TYPES, name_nodes, preprocess

log = logging.getLogger(__name__)

MATMUL_OPS = ["MatMul", "Gemm"]
"""Ops whose outputs stay float unless `quantize_matmul_outputs` (logits, attention scores)."""
STATS_SAMPLES = 64
"""Calibration samples bias correction and SmoothQuant take their per-channel statistics from."""


@dataclass(frozen=True)
class PreparedModel:
    """A float model ready for ORT's quantiser, its ranges, and the nodes that must stay float32."""

    path: Path
    calibration: Calibration
    exclude: tuple[str, ...]
    """Nodes that read or write a tensor that could not be calibrated."""
    steps: tuple[str, ...]
    """What was applied (for the log and the trial's record)."""
    corrected: Mapping[str, tuple[str, np.ndarray | None]] = field(default_factory=dict, compare=False)
    """Bias-corrected layers and their original biases (`bias_correction.restore_biases`)."""


def _feeds(task: Task, model: Path, n: int) -> list[dict[str, np.ndarray]]:
    data = calibration_samples(task, n)
    batch, used = batch_plan(len(next(iter(data.values()))), _model_batch(model))
    reader = FeedReader(data, batch, used)
    return list(iter(reader.get_next, None))


def prepare_static(src: Path, workdir: Path, deploy: DeployConfig, task: Task) -> PreparedModel:
    """Apply the float techniques `deploy` asks for to `src` and calibrate; files go to `workdir`."""
    from edge_search.transforms.quantize import bias_correction, equalization, smoothing

    workdir.mkdir(parents=True, exist_ok=True)
    steps: list[str] = []
    model = name_nodes(preprocess(src, workdir / "pre.onnx"))
    path = workdir / "prepared.onnx"
    feeds: list[dict[str, np.ndarray]] = []
    if deploy.smooth_quant or deploy.bias_correction:
        onnx.save(model, str(path))
        feeds = _feeds(task, path, STATS_SAMPLES)
    if deploy.cross_layer_equalization and equalization.equalize(model):
        steps.append("cle")
    if deploy.smooth_quant and smoothing.smooth(model, feeds, deploy.smooth_quant_alpha):
        steps.append(f"smoothquant:{deploy.smooth_quant_alpha}")
    onnx.save(model, str(path))
    calibration = calibrate(path, task, deploy, workdir / "calibration.json")
    exclude = tuple(nodes_touching(model, calibration.unquantisable))
    if deploy.bias_correction:
        probe = workdir / "weights-probe.onnx"
        prepared = PreparedModel(path, calibration, exclude, tuple(steps))
        quantize_prepared(prepared, probe, deploy.model_copy(update={"quant_format": "qdq"}), [])
        corrected = bias_correction.correct_biases(model, onnx.load(str(probe)), feeds)
        if corrected:
            steps.append("bias-correction")
            onnx.save(model, str(path))
            # the ranges must describe the model that is deployed (on Lite0: 0.92 -> 0.93 agreement)
            calibration = calibrate(path, task, deploy, workdir / "calibration.json")
            exclude = tuple(nodes_touching(model, calibration.unquantisable))
        probe.unlink()
        return PreparedModel(path, calibration, exclude, tuple(steps), corrected)
    return PreparedModel(path, calibration, exclude, tuple(steps))


def quantize_prepared(prepared: PreparedModel, dst: Path, deploy: DeployConfig, exclude: list[str]) -> None:
    """int8-static quantisation of a prepared model with its cached ranges; `exclude` (and the
    nodes that could not be calibrated) stay float32, with their biases from before bias correction."""
    from edge_search.transforms.quantize.bias_correction import restore_biases

    excluded = sorted({*exclude, *prepared.exclude})
    restore = {n: prepared.corrected[n] for n in excluded if n in prepared.corrected}
    if restore:
        with tempfile.TemporaryDirectory(prefix="edge-search-restore-") as tmp:
            model = onnx.load(str(prepared.path))
            restore_biases(model, restore)
            source = Path(tmp) / "prepared.onnx"
            onnx.save(model, str(source))
            _quantize(source, prepared, dst, deploy, excluded)
    else:
        _quantize(prepared.path, prepared, dst, deploy, excluded)


def _quantize(source: Path, prepared: PreparedModel, dst: Path, deploy: DeployConfig, excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[prepared.calibration.method]
    qdq = deploy.quant_format == "qdq"
    extra: dict[str, object] = {"ActivationSymmetric": deploy.activation_symmetric}
    if not deploy.quantize_matmul_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = MATMUL_OPS
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress; keep it off the CLI
        quantize_static(
            str(source), str(dst), None,
            quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
            per_channel=deploy.per_channel, reduce_range=deploy.reduce_range,
            activation_type=QuantType.QInt8 if qdq and deploy.activation_type == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method, op_types_to_quantize=OP_TYPES[deploy.quantize_op_types],
            nodes_to_exclude=excluded, extra_options=extra,
            calibration_cache_path=str(prepared.calibration.cache))
    if excluded:
        from edge_search.transforms.quantize.float_islands import shield_float_nodes

        model = onnx.load(str(dst))
        if shield_float_nodes(model, excluded):
            onnx.save(model, str(dst))


def prepare_dynamic(src: Path, workdir: Path, deploy: DeployConfig) -> Path:
    """The float model int8-dynamic quantises: pre-processed, named, equalised where asked."""
    from edge_search.transforms.quantize import equalization

    workdir.mkdir(parents=True, exist_ok=True)
    model = name_nodes(preprocess(src, workdir / "pre.onnx"))
    if deploy.cross_layer_equalization:
        equalization.equalize(model)
    path = workdir / "prepared.onnx"
    onnx.save(model, str(path))
    return path
