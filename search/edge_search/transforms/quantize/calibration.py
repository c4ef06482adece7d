"""Activation ranges for int8-static: ONNX Runtime's calibrators, driven so that they hold on real networks.

edge-search calibrates with ORT's public `create_calibrator` and hands the ranges to
`quantize_static` as ORT's calibration cache (`save_tensors_data` / `calibration_cache_path`),
instead of letting `quantize_static` calibrate, because three things go wrong inside it on real
networks (issue 14; measured on EfficientNet-Lite and all-MiniLM-L6-v2):

- percentile is symmetric by default in `create_calibrator`, and the symmetric collector calls
  `np.histogram(abs(x))` with an auto-detected range: one NaN in any collected tensor raises
  "autodetected range of [nan, nan] is not finite" (min/max and entropy skip NaN with
  `nanmin`/`nanmax`, so only percentile failed). ORT collects every float tensor of its op set,
  including tensors nobody quantises: a transformer's attention-mask arithmetic holds -inf or
  finfo.min, which percentile cannot bin and min/max turns into useless ranges (MiniLM static int8:
  fidelity_top1 0.125);
- the collectors stack the per-batch outputs, so a short last batch (samples not a multiple of
  the batch) fails with "inhomogeneous shape", and everything collected in one call stays in memory;
- `quantize_static` cannot pass `num_bins`, and with the default 128 bins entropy (KL) has one
  candidate threshold, the full range: it is min/max under another name.

So: batches are equal-sized and fed one per `collect_data` call (histograms and ranges merge
across calls); the inputs must be finite (a NaN in the data is the data's fault:
one-line `InputError`); a min/max pass finds the tensors whose values are not finite (or beyond
`HUGE`, mask constants): they are left out of the histogram and the nodes that read or write them
stay in float32; percentile is asymmetric (both tails cut) unless activations are symmetric;
entropy gets real bins; every range is checked finite before it is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edge_search.config import DeployConfig
from edge_search.errors import InputError
from edge_search.tasks.base import Task

log = logging.getLogger(__name__)

MAX_BATCH = 16
"""Samples per calibration batch at most (equal-sized, see `batch_plan`). ORT's calibrators keep
every output of every batch they are given in one `collect_data` call, so edge-search gives them
one batch per call: memory is one batch's activations, not the whole calibration set's (72
EfficientNet-Lite2 samples in one call took 21 GB and were killed for memory)."""
ENTROPY_MAX_SAMPLES = 128
"""Entropy (KL) searches a threshold per tensor in Python; cap its samples."""
HUGE = 1e30
"""A calibration value beyond this is a sentinel (e.g. finfo.min in an attention mask), not a signal."""
PERCENTILE_BINS = 2048
"""Histogram bins for percentile (ORT's default for it)."""
ENTROPY_BINS = 512
"""Histogram bins for entropy: ORT's default of 128 leaves the KL search a single candidate."""


@dataclass(frozen=True)
class Calibration:
    """Ranges of a model's tensors (ORT's calibration cache file) and what could not be calibrated."""

    cache: Path
    """ORT calibration cache (JSON, `onnxruntime.quantization.calibrate.save_tensors_data`)."""
    method: str
    unquantisable: tuple[str, ...]
    """Tensors whose calibration values are not finite (left out; their nodes stay float32)."""
    samples: int


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


def batch_plan(n: int, fixed: int | None) -> tuple[int, int]:
    """(batch size, samples used) so that every batch has the same size: the model's fixed batch
    (the remainder is dropped), else the largest divisor of `n` up to `MAX_BATCH`."""
    if fixed is not None:
        return fixed, (n // fixed) * fixed
    return max(d for d in range(1, min(n, MAX_BATCH) + 1) if n % d == 0), n


def calibration_samples(task: Task, n: int) -> dict[str, np.ndarray]:
    """Up to `n` calibration samples from `task`, one array per input; `InputError` when there are
    none or an input holds NaN/inf."""
    parts: dict[str, list[np.ndarray]] = {}
    for feed in task.calibration_batches(n, MAX_BATCH):
        for k, v in feed.items():
            parts.setdefault(k, []).append(v)
    if not parts:
        raise InputError(f"int8-static needs calibration data; task '{task.name}' provides none")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    for k, v in data.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            bad = int(np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1))[0])
            raise InputError(f"calibration data of task '{task.name}': input '{k}' holds NaN or inf "
                             f"(first in sample {bad}); int8 ranges cannot be calibrated on it")
    return data


class FeedReader:
    """ORT `CalibrationDataReader` over equal-sized batches of in-memory samples."""

    def __init__(self, data: dict[str, np.ndarray], batch: int, used: int) -> None:
        self._data, self._batch, self._used = data, batch, used
        self._it = self._feeds()

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for lo in range(0, self._used, self._batch):
            yield {k: np.ascontiguousarray(v[lo:lo + self._batch]) for k, v in self._data.items()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next batch, or None when the samples are used up."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = self._feeds()

    def batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Every batch, from the first."""
        return self._feeds()


def _op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _finite(lo: object, hi: object) -> bool:
    a, b = float(np.asarray(lo).max()), float(np.asarray(hi).max())
    c, d = float(np.asarray(lo).min()), float(np.asarray(hi).min())
    return all(np.isfinite(x) and abs(x) <= HUGE for x in (a, b, c, d))


def calibrate(model: Path, task: Task, deploy: DeployConfig, cache: Path) -> Calibration:
    """Calibrate `model` (pre-processed, named) on `task`'s data per `deploy`; write ORT's cache to
    `cache` and return it with the tensors that could not be calibrated."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data

    method = deploy.calibration_method
    n = min(deploy.calibration_size, ENTROPY_MAX_SAMPLES) if method == "entropy" else deploy.calibration_size
    data = calibration_samples(task, n)
    available = len(next(iter(data.values())))
    batch, used = batch_plan(available, _model_batch(model))
    if used == 0:
        raise InputError(f"the model has a fixed batch of {batch}; task '{task.name}' gives only "
                         f"{available} calibration samples")
    if available < deploy.calibration_size:
        log.info("calibration: %d samples asked, %d available", deploy.calibration_size, available)
    captured = io.StringIO()  # ORT's histogram calibrators print progress; keep it off the CLI
    with tempfile.TemporaryDirectory(prefix="edge-search-calib-") as tmp, contextlib.redirect_stdout(captured):
        minmax = create_calibrator(model, _op_types(), augmented_model_path=str(Path(tmp) / "minmax.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
        for feed in FeedReader(data, batch, used).batches():
            minmax.collect_data(FeedReader(feed, batch, batch))
        ranges = minmax.compute_data()
        bad = sorted(t for t, r in ranges.items() if not _finite(*r.range_value))
        inputs = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
        if bad and inputs & set(bad):
            raise InputError(f"calibration: model input(s) {sorted(inputs & set(bad))} take non-finite values")
        if method == "minmax":
            result = TensorsData(CalibrationMethod.MinMax, {t: r for t, r in ranges.items() if t not in bad})
        else:
            ort_method = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.Entropy
            extra: dict[str, object] = {"symmetric": deploy.activation_symmetric}
            if method == "percentile":
                extra.update(num_bins=PERCENTILE_BINS, percentile=deploy.calibration_percentile)
            else:
                extra.update(num_bins=ENTROPY_BINS, num_quantized_bins=128)
            hist = create_calibrator(model, _op_types(), augmented_model_path=str(Path(tmp) / "hist.onnx"),
                                     calibrate_method=ort_method, extra_options=extra)
            # ORT's attribute: the tensors the histogram collector is fed (set by create_calibrator)
            hist.tensors_to_calibrate = {t for t in hist.tensors_to_calibrate if t not in bad}
            for feed in FeedReader(data, batch, used).batches():
                hist.collect_data(FeedReader(feed, batch, batch))
            result = hist.compute_data()
            late = sorted(t for t, r in result.items() if not _finite(*r.range_value))
            if late:
                result = TensorsData(ort_method, {t: r for t, r in result.items() if t not in late})
                bad = sorted({*bad, *late})
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_tensors_data(result, cache)
    if bad:
        log.info("calibration: %d tensors take non-finite or sentinel values (e.g. %s); their nodes stay "
                 "float32", len(bad), ", ".join(bad[:3]))
    return Calibration(cache=cache, method=method, unquantisable=tuple(bad), samples=used)


def nodes_touching(model: onnx.ModelProto, tensors: tuple[str, ...]) -> list[str]:
    """Names of the nodes that read or write any of `tensors` (graph order)."""
    wanted = set(tensors)
    return [n.name for n in model.graph.node if wanted & {*n.input, *n.output}]
