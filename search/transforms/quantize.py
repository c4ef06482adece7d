"""int8 quantisation with ONNX Runtime's quantisation tool (dynamic or static with calibration).

Data types follow ONNX Runtime's guidance for x86-64 CPUs:
- dynamic: activations are always uint8 (DynamicQuantizeLinear); weights QInt8 (U8S8), ORT's
  default and the fast path of its integer GEMM kernels. On AVX2/AVX-512 CPUs without VNNI the
  u8*s8 instruction can saturate; `reduce_range` (7-bit weights) is the documented remedy.
- static QDQ: S8S8 (activations and weights QInt8), "the default and first choice" in ORT's docs.
- static QOperator: U8S8 (activations QUInt8), because S8S8 QOperator kernels are slow on x86-64.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from edge_search.config import DeployConfig
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


# mypy cannot follow the editable install's import hook (edge_search -> search/), so Transform may be Any.
class QuantizeTransform(Transform):  # type: ignore[misc, unused-ignore]
    """int8-dynamic or int8-static (QDQ or QOperator) quantisation per the deploy knobs."""

    name = "quantize"

    def applies(self, deploy: DeployConfig) -> bool:
        """When `precision` is `int8-dynamic` or `int8-static`."""
        return deploy.quantized

    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Quantise `src` into `dst`; static quantisation calibrates on `task.calibration_batches`."""
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if not self.applies(deploy):
            raise ValueError(f"precision {deploy.precision} is not an int8 precision")
        dst.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="edge-search-quant-") as tmp:
            model_in = preprocess(src, Path(tmp) / "preprocessed.onnx")
            if deploy.precision == "int8-dynamic":
                quantize_dynamic(str(model_in), str(dst), per_channel=deploy.per_channel,
                                 reduce_range=deploy.reduce_range, weight_type=QuantType.QInt8)
            else:
                self._static(model_in, dst, deploy, task)
        log.info("quantised %s -> %s (%s) in %.2f s", src, dst, deploy.precision, time.perf_counter() - start)

    @staticmethod
    def _static(src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[deploy.calibration_method]
        n = deploy.calibration_size
        if deploy.calibration_method == "entropy":
            n = min(n, ENTROPY_MAX_SAMPLES)
        qdq = deploy.quant_format == "qdq"
        fixed = _model_batch(src)
        reader = TaskCalibrationReader(task, n, fixed or CALIBRATION_BATCH, fixed_batch=fixed is not None)
        # ORT's histogram calibrators print progress to stdout; keep it out of the CLI's output.
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            quantize_static(
                str(src), str(dst), reader,
                quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                per_channel=deploy.per_channel, reduce_range=deploy.reduce_range,
                activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=method)
        if captured.getvalue():
            log.debug("calibration output: %s", captured.getvalue().strip())
