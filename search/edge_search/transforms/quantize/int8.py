"""int8 quantisation with ONNX Runtime's quantisation tool (dynamic or static with calibration).

Data types follow ONNX Runtime's guidance for x86-64 CPUs:
- dynamic: activations are always uint8 (DynamicQuantizeLinear); weights QInt8 (U8S8), ORT's
  default and the fast path of its integer GEMM kernels. On AVX2/AVX-512 CPUs without VNNI the
  u8*s8 instruction can saturate; `reduce_range` (7-bit weights) is the documented remedy.
- static QDQ: S8S8 (activations and weights QInt8), "the default and first choice" in ORT's docs.
- static QOperator: U8S8 (activations QUInt8), because S8S8 QOperator kernels are slow on x86-64.

What is quantised: `quantize_op_types` (`conv`, `matmul` = MatMul+Gemm, or ORT's default set) and
`keep_fp32` (the first and last Conv/Gemm/MatMul, depthwise convs, or both left in float32; their
names are looked up on the model that is quantised, after ORT's pre-processing).

Mixed precision by measured sensitivity (int8-static): `keep_fp32_top_k` / `keep_fp32_fraction`
keep the nodes `edge_search.transforms.quantize.sensitivity` ranks most sensitive in float32 (the ranking is computed
once per model, data and quantisation settings, and cached; the quantisation reuses its calibration
ranges). Every quantised deployable records the nodes it left in float32 in its metadata_props
(`edge_search.fp32_nodes`), which the study logs as the MLflow tag `fp32_nodes`.

Weight-only int4/int8 (`int4-weight`, `int8-weight`) uses ORT's `MatMulNBitsQuantizer`: MatMul
weights become blocked 4/8-bit MatMulNBits nodes (activations stay float32). ORT supports this for
MatMul only (not Gemm or Conv), i.e. for transformer-style models.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_search.config import DeployConfig, KeepFp32
from edge_search.errors import InputError
from edge_search.tasks.base import Task
from edge_search.transforms.base import Transform

log = logging.getLogger(__name__)

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


class QuantizeTransform(Transform):
    """int8-dynamic or int8-static (QDQ or QOperator) quantisation per the deploy knobs."""

    name = "quantize"
    key_extras = ("sensitivity",)

    def applies(self, deploy: DeployConfig) -> bool:
        """When `precision` is `int8-dynamic` or `int8-static`."""
        return deploy.quantized

    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """The int8 knobs, and `input_resolution` (calibration data is resized to it); the
        mixed-precision knobs (and the ranking method's version, `sensitivity`) only when set, so
        keys of models made without them stay as they were."""
        knobs = deploy.model_dump(include={"precision", "calibration_method", "calibration_size", "per_channel",
                                           "reduce_range", "quant_format", "keep_fp32", "quantize_op_types",
                                           "input_resolution"})
        mixed = {k: v for k, v in deploy.model_dump(include={"keep_fp32_top_k", "keep_fp32_fraction"}).items() if v}
        if mixed:
            from edge_search.transforms.quantize.sensitivity import SENSITIVITY_ID

            knobs.update(mixed, sensitivity=SENSITIVITY_ID)
        return knobs

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Quantise `src` into `dst`; static quantisation calibrates on `task.calibration_batches`."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if not self.applies(deploy):
            raise ValueError(f"precision {deploy.precision} is not an int8 precision")
        dst.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edge-search-quant-") as tmp:
            model_in = preprocess(src, Path(tmp) / "preprocessed.onnx")
            named = name_nodes(model_in)
            exclude = nodes_kept_fp32(named, deploy.keep_fp32)
            model_in = Path(tmp) / "named.onnx"
            onnx.save(named, str(model_in))
            calibration: Path | None = None
            if deploy.keep_fp32_top_k > 0 or deploy.keep_fp32_fraction > 0:
                exclude, calibration = self._sensitive_nodes(src, named, deploy, task)
            if deploy.precision == "int8-dynamic":
                quantize_dynamic(str(model_in), str(dst), per_channel=deploy.per_channel,
                                 reduce_range=deploy.reduce_range, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=OP_TYPES[deploy.quantize_op_types],
                                 nodes_to_exclude=exclude)
            else:
                self.quantize_static_model(model_in, dst, deploy, task, exclude, calibration_cache=calibration)
        from edge_search.transforms.quantize.sensitivity import record_fp32_nodes

        record_fp32_nodes(dst, exclude)
        log.info("quantised %s -> %s (%s) in %.2f s", src, dst, deploy.precision, time.perf_counter() - start)

    def _sensitive_nodes(self, src: Path, named: onnx.ModelProto, deploy: DeployConfig,
                         task: Task) -> tuple[list[str], Path | None]:
        """The top-ranked nodes for `keep_fp32_top_k`/`_fraction`, and the ranking's calibration file."""
        from edge_search.transforms.quantize.sensitivity import QuantSettings, analyse_sensitivity, kept_nodes

        report = analyse_sensitivity(src, task, QuantSettings.from_deploy(deploy), cache=self.cache,
                                     resolution=deploy.input_resolution)
        names = {n.name for n in named.graph.node}
        kept = [n for n in kept_nodes(deploy, report) if n in names]
        if len(kept) < len(kept_nodes(deploy, report)):
            log.warning("sensitivity ranking names nodes this model lacks; kept %d of them", len(kept))
        return kept, report.calibration_file

    @staticmethod
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
