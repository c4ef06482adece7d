"""Fitting device profiles: the host from its own suite measurements, boards from published data.

Host (`measure_suite` then `fit_host`): every suite model (fp32 and int8) is profiled per node at
1 thread and at each thread count, and measured end to end at each thread count, all on this
machine through `LocalDevice`. From the models of the families being fitted:
- ``rate.<p>.<class>`` = the class's graph work over its profiled single-thread time (and the same
  per group), the host throughputs that the carry divides by;
- ``thread_scaling_by["<p>.<class>"][n]`` = profiled 1-thread time over profiled n-thread time;
- ``overhead_ms`` = the median of (end-to-end 1-thread latency − sum of profiled node times);
- ``error_band`` = the 90th percentile of |relative error| of the fitted model on its own data.

Boards (`fit_board`): the published latencies are whole-model figures from other runtimes
(TFLite XNNPACK, TensorRT, PyTorch). Each published model is mapped to a suite proxy
(`reference_suite.PUBLISHED_PROXIES`), profiled on this host, and the board's rates for the
compute-bound and memory-bound groups plus a fixed overhead are fitted by least squares on the
relative error of the 1-thread figures: ``T = O + Σ_c t_host,c · R_host,c / R_board,group(c)``.
The two groups are nearly collinear within one model family, so a weak prior ties them to one
common slow-down (the data moves them apart only as far as it can tell them apart). The thread
curve is read directly off the published 1..4-thread figures (median ratio over models, per
precision). The error band is the 90th percentile of leave-one-model-out relative errors.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from edge_search.devices.base import MeasureRequest, SessionKnobs
from edge_search.devices.emulated import ClassTime, HostBreakdown, breakdown_from_nodes, carry
from edge_search.devices.opclass import class_group
from edge_search.devices.profile import OP_CLASSES, Calibration, DeviceProfile, Sourced
from edge_search.devices.reference_suite import DEFAULT_CACHE, SuiteModel, export
from edge_search.errors import InputError

PRIOR_WEIGHT = 0.5
"""Weight of the prior tying the memory-bound slow-down to the compute-bound one (in log units)."""


@dataclass
class SuiteRecord:
    """One model measured on the host: single-thread breakdown, n-thread breakdowns, end-to-end medians."""

    name: str
    family: str
    precision: str
    breakdown: HostBreakdown
    breakdown_at: dict[int, HostBreakdown]
    e2e_ms: dict[int, float]


def _bd_to_json(bd: HostBreakdown) -> dict[str, Any]:
    return {"classes": [asdict(c) for c in bd.classes], "peak_memory_mb": bd.peak_memory_mb,
            "unmatched_nodes": bd.unmatched_nodes}


def _bd_from_json(d: dict[str, Any]) -> HostBreakdown:
    return HostBreakdown(tuple(ClassTime(**c) for c in d["classes"]), d.get("peak_memory_mb"),
                         int(d.get("unmatched_nodes", 0)))


def save_records(records: Sequence[SuiteRecord], path: Path) -> None:
    """Write measured records as JSON (so fits and the validation can be rerun without measuring)."""
    data = [{"name": r.name, "family": r.family, "precision": r.precision, "breakdown": _bd_to_json(r.breakdown),
             "breakdown_at": {str(n): _bd_to_json(b) for n, b in r.breakdown_at.items()},
             "e2e_ms": {str(n): v for n, v in r.e2e_ms.items()}} for r in records]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def load_records(path: Path) -> list[SuiteRecord]:
    """Read records written by `save_records`."""
    return [SuiteRecord(d["name"], d["family"], d["precision"], _bd_from_json(d["breakdown"]),
                        {int(n): _bd_from_json(b) for n, b in d["breakdown_at"].items()},
                        {int(n): float(v) for n, v in d["e2e_ms"].items()}) for d in json.loads(path.read_text())]


def measure_suite(host: Any, models: Iterable[SuiteModel], precisions: Sequence[str] = ("fp32", "int8"),
                  threads: Sequence[int] = (1, 2), runs: int = 10, max_time_s: float = 2.0,
                  end_to_end: bool = True, cache_dir: Path = DEFAULT_CACHE,
                  progress: Callable[[str], None] | None = None) -> list[SuiteRecord]:
    """Profile (and, with `end_to_end`, measure) each model on `host` (a `LocalDevice`)."""
    records = []
    for m in models:
        for prec in precisions:
            path = export(m, cache_dir, prec)
            bds: dict[int, HostBreakdown] = {}
            e2e: dict[int, float] = {}
            for n in threads if end_to_end else (1,):
                if progress:
                    progress(f"{m.name} {prec} {n} thread(s)")
                req = MeasureRequest(model_path=path, session=SessionKnobs(intra_op_threads=n),
                                     max_time_s=max_time_s, min_samples=10)
                bds[n] = breakdown_from_nodes(path, host.profile_nodes(req, runs=runs), runs)
                if end_to_end:
                    e2e[n] = host.measure(req).median_ms
            records.append(SuiteRecord(m.name, m.family, prec, bds[1], bds, e2e))
    return records


def _sum(bd: HostBreakdown) -> dict[tuple[str, str], tuple[float, float]]:
    return {(c.precision, c.op_class): (c.host_ms, c.work) for c in bd.classes}


def _src(text: str) -> Callable[[float], Sourced]:
    return lambda v: Sourced(value=round(float(v), 6), source=text)


def _q90(errors: Sequence[float]) -> float:
    return float(np.percentile(np.abs(errors), 90)) if errors else math.nan


def fit_host(records: Sequence[SuiteRecord], host_id: str, note: str = "") -> Calibration:
    """Host calibration from suite records (see the module docstring)."""
    if not records:
        raise InputError("no suite measurements to fit")
    src = _src(f"edge-search calibrate --device host: {len(records)} suite model/precision pairs "
               f"({', '.join(sorted({r.family for r in records}))}) measured on {host_id}{note}")
    params: dict[str, Sourced] = {}
    by: dict[str, list[float]] = {}
    for r in records:
        for (p, c), (ms, work) in _sum(r.breakdown).items():
            for key in (f"rate.{p}.{c}", f"rate.{p}.{class_group(c)}"):
                acc = by.setdefault(key, [0.0, 0.0])
                acc[0] += work
                acc[1] += ms
    for key, (work, ms) in sorted(by.items()):
        if work > 0 and ms > 0:
            params[key] = src(work / ms / 1e6)
    scaling: dict[str, dict[int, Sourced]] = {}
    threads = sorted({n for r in records for n in r.breakdown_at if n > 1})
    for n in threads:
        acc2: dict[str, list[float]] = {}
        for r in records:
            if n not in r.breakdown_at:
                continue
            t1, tn = _sum(r.breakdown), _sum(r.breakdown_at[n])
            for k, (ms, _) in t1.items():
                if k in tn and tn[k][0] > 0:
                    slot = acc2.setdefault(f"{k[0]}.{k[1]}", [0.0, 0.0])
                    slot[0] += ms
                    slot[1] += tn[k][0]
        for key, (a, b) in acc2.items():
            scaling.setdefault(key, {})[n] = src(a / b)
    overheads = [r.e2e_ms[1] - r.breakdown.host_ms for r in records if 1 in r.e2e_ms]
    params["overhead_ms"] = src(max(0.0, statistics.median(overheads)) if overheads else 0.0)
    cal = Calibration(source=src(0).source, runtime_note="measured on this host with ONNX Runtime",
                      fitted_at=time.strftime("%Y-%m-%d"), reference_host=host_id, params=params,
                      thread_scaling_by=scaling)
    errs = [e for r in records for e in _host_errors(r, cal)]
    return cal.model_copy(update={
        "error_band": Sourced(value=round(_q90(errs), 4), source="90th percentile of |relative error| of the "
                              "fitted host model on its own suite measurements"),
        "fit_stats": {"n": float(len(errs)), "mape": float(np.mean(np.abs(errs))) if errs else math.nan}})


def host_predict(r: SuiteRecord, cal: Calibration, threads: int, host: DeviceProfile | None = None) -> float:
    """Predicted end-to-end host latency of a measured record at `threads` (host carried to itself)."""
    prof = host or _bare_profile(cal)
    return carry(r.breakdown, prof, prof, threads).median_ms


def _host_errors(r: SuiteRecord, cal: Calibration) -> list[float]:
    return [host_predict(r, cal, n) / actual - 1.0 for n, actual in r.e2e_ms.items()]


def _bare_profile(cal: Calibration, cores: int = 64) -> DeviceProfile:
    return DeviceProfile.model_validate({
        "name": "fit", "cpu": {"architecture": "x86_64", "core_type": "fit", "cores": cores, "clock_ghz": 1},
        "memory": {"ram_mb": 1024, "bandwidth_gb_s": 1, "reserve_mb": 0}, "latency": {"method": "emulated"},
        "calibration": cal.model_dump()})


# --- boards from published data ---------------------------------------------------------------


@dataclass(frozen=True)
class PublishedRow:
    """One row of the published CSV."""

    device: str
    runtime: str
    model: str
    precision: str
    threads: int | None
    latency_ms: float
    source: str


def read_published(path: Path) -> list[PublishedRow]:
    """Rows of the published CSV (comment lines starting with '#' are skipped)."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    rows = []
    for d in csv.DictReader(lines):
        rows.append(PublishedRow(d["device"], d["runtime"], d["model"], d["precision"],
                                 int(d["threads"]) if d["threads"] else None, float(d["latency_ms"]), d["source"]))
    return rows


def _x(bd: HostBreakdown, host: Calibration) -> tuple[float, float]:
    """Host-normalised work (ms x host rate) of the compute and memory groups."""
    xc = xm = 0.0
    for c in bd.classes:
        prec = c.precision if c.precision != "fp16" else "fp32"
        r = host.rate(prec, c.op_class, class_group(c.op_class))
        if r is None:
            r = host.rate("fp32", c.op_class, class_group(c.op_class)) or 1.0
        if class_group(c.op_class) == "compute":
            xc += c.host_ms * r
        else:
            xm += c.host_ms * r
    return xc, xm


def fit_group_rates(xs: Sequence[tuple[float, float]], ys: Sequence[float], host: Calibration,
                    precision: str) -> tuple[float, float, float]:
    """Least-squares (relative error) fit of overhead_ms and the compute/memory rates (GFLOP/s, GB/s)."""
    rc = host.rate(precision, "compute", "compute") or host.rate("fp32", "compute", "compute") or 1.0
    rm = host.rate(precision, "memory", "memory") or host.rate("fp32", "memory", "memory") or 1.0
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    slow0 = float(np.median(y / (x[:, 0] / rc + x[:, 1] / rm)))

    def resid(theta: np.ndarray) -> np.ndarray:
        o, bc, bm = theta
        pred = o + bc * x[:, 0] + bm * x[:, 1]
        prior = PRIOR_WEIGHT * (math.log(bc * rc) - math.log(bm * rm))
        return np.append(pred / y - 1.0, prior)

    theta0 = np.array([0.0, slow0 / rc, slow0 / rm])
    res = least_squares(resid, theta0, bounds=([0.0, 1e-12, 1e-12], [np.inf, np.inf, np.inf]))
    o, bc, bm = res.x
    return float(o), 1.0 / bc, 1.0 / bm


def thread_curve(rows: Sequence[PublishedRow]) -> dict[int, float]:
    """Median over models of T(1)/T(n), from published multi-thread rows of one device and precision."""
    by_model: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.threads is not None:
            by_model.setdefault(r.model, {})[r.threads] = r.latency_ms
    ratios: dict[int, list[float]] = {}
    for t in by_model.values():
        if 1 in t:
            for n, v in t.items():
                if n > 1:
                    ratios.setdefault(n, []).append(t[1] / v)
    return {n: float(np.median(v)) for n, v in sorted(ratios.items())}


__all__ = ["OP_CLASSES", "PublishedRow", "SuiteRecord", "fit_group_rates", "fit_host", "host_predict",
           "load_records", "measure_suite", "read_published", "save_records", "thread_curve"]
