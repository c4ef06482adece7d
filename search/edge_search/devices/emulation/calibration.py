"""Fitting device profiles: the host from its own suite measurements, boards from published data.

Host (`measure_suite` then `fit_host`): every suite model (fp32 and int8) is profiled per node at
1 thread and measured end to end at each thread count, all on this machine through `LocalDevice`
(several interleaved rounds, each a fresh worker process; per process the fastest run and each node's
fastest execution, then the median over processes).
From the models of the families being fitted:
- ``rate.<p>.<class>`` = the class's graph work over its profiled single-thread time (and the same
  per group), the host throughputs that the carry divides by;
- ``thread_scaling_by["<p>"][n]`` = median over models of end-to-end 1-thread over n-thread
  latency (per-class n-thread profiles were too noisy on a shared 2-core machine to use);
- ``overhead_ms``, ``profile_scale`` and ``profile_overhead_us`` from a bounded least-squares fit
  (relative error) of end-to-end 1-thread latency = overhead + scale × (profiled node sum − per-node
  profiler cost × nodes); the scale (fitted ~1.12 here) is there because each node counts with its
  fastest execution and the sum of per-node fastest executions is below any whole run (before it,
  21 % of held-out host families' figures missed ±20 %; with it 8 %: `benchmarks/host_lofo.py`);
- ``error_band`` = the 90th percentile of |relative error| of the fitted model on its own data.

Boards (`fit_board`): the published latencies are whole-model figures from other runtimes
(TFLite XNNPACK, TensorRT, PyTorch). Each published model is mapped to a suite proxy
(`reference_suite.for_published`), profiled on this host, and the board's rates for the
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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from edge_search.devices.base import Device, MeasureRequest, SessionKnobs
from edge_search.devices.emulation.carry import ClassTime, HostBreakdown, breakdown_from_nodes, carry, net_host_ms
from edge_search.devices.emulation.opclass import class_group
from edge_search.devices.emulation.reference_suite import DEFAULT_CACHE, SuiteModel, export
from edge_search.devices.profile import Calibration, DeviceProfile, Sourced
from edge_search.devices.stats import LatencyStats
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
    return {
        "classes": [asdict(c) for c in bd.classes],
        "peak_memory_mb": bd.peak_memory_mb,
        "unmatched_nodes": bd.unmatched_nodes,
    }


def _bd_from_json(d: dict[str, Any]) -> HostBreakdown:
    return HostBreakdown(
        tuple(ClassTime(**c) for c in d["classes"]), d.get("peak_memory_mb"), int(d.get("unmatched_nodes", 0))
    )


def save_records(records: Sequence[SuiteRecord], path: Path) -> None:
    """Write measured records as JSON (so fits and the validation can be rerun without measuring)."""
    data = [
        {
            "name": r.name,
            "family": r.family,
            "precision": r.precision,
            "breakdown": _bd_to_json(r.breakdown),
            "breakdown_at": {str(n): _bd_to_json(b) for n, b in r.breakdown_at.items()},
            "e2e_ms": {str(n): v for n, v in r.e2e_ms.items()},
        }
        for r in records
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def load_records(path: Path) -> list[SuiteRecord]:
    """Read records written by `save_records`."""
    return [
        SuiteRecord(
            d["name"],
            d["family"],
            d["precision"],
            _bd_from_json(d["breakdown"]),
            {int(n): _bd_from_json(b) for n, b in d["breakdown_at"].items()},
            {int(n): float(v) for n, v in d["e2e_ms"].items()},
        )
        for d in json.loads(path.read_text())
    ]


def measure_suite(
    host: Device,
    models: Iterable[SuiteModel],
    precisions: Sequence[str] = ("fp32", "int8"),
    threads: Sequence[int] = (1, 2),
    runs: int = 10,
    max_time_s: float = 2.0,
    end_to_end: bool = True,
    repeats: int = 1,
    cache_dir: Path = DEFAULT_CACHE,
    progress: Callable[[str], None] | None = None,
) -> list[SuiteRecord]:
    """Profile each model at 1 thread on `host` (a `LocalDevice`) and, with `end_to_end`, measure it
    at each thread count.

    Processes are the unit: every profile and every measurement runs in a fresh worker process, the
    suite is run `repeats` times, interleaved, and each model keeps the **median over processes** of
    each class's profiled time and of each end-to-end latency (fresh processes on a shared machine
    differ by several per cent; one process is one sample). Inside a process each node counts with its
    fastest execution over the `runs` profiled runs (`carry.breakdown_from_nodes`) and the end-to-end
    latency is the process's fastest run (`_undisturbed_ms`): on a shared machine preemption only adds.
    """
    jobs = [(m, p, export(m, cache_dir, p)) for m in models for p in precisions]
    bds: dict[tuple[str, str], list[HostBreakdown]] = {}
    e2e: dict[tuple[str, str], dict[int, list[float]]] = {}
    for rnd in range(repeats):
        for m, prec, path in jobs:
            key = (m.name, prec)
            if progress:
                progress(f"round {rnd + 1}/{repeats}: {m.name} {prec}")
            req = MeasureRequest(model_path=path, session=SessionKnobs(intra_op_threads=1),
                                 max_time_s=max_time_s, min_samples=10)
            bds.setdefault(key, []).append(breakdown_from_nodes(path, host.profile_nodes(req, runs=runs), runs))
            for n in threads if end_to_end else ():
                req_n = req.model_copy(update={"session": SessionKnobs(intra_op_threads=n)})
                e2e.setdefault(key, {}).setdefault(n, []).append(_undisturbed_ms(host.measure(req_n), n))
    out = []
    for m, p, _ in jobs:
        bd = median_breakdown(bds[(m.name, p)])
        med = {n: float(np.median(v)) for n, v in e2e.get((m.name, p), {}).items()}
        out.append(SuiteRecord(m.name, m.family, p, bd, {1: bd}, med))
    return out


def _undisturbed_ms(stats: LatencyStats, threads: int = 1) -> float:
    """A process's undisturbed latency: preemption on a shared machine only ever adds to a run, so the
    fastest run; at one intra-op thread also at most the process's CPU time per run (the engine's
    ``cpu_ms_per_run``), which excludes the time the process waited for a core and so holds even when
    every run was preempted (a machine loaded beyond its cores). Processes stay the unit: the suite
    keeps the median over processes of this figure."""
    fastest = min(stats.samples_ms) if stats.samples_ms else stats.median_ms
    cpu = stats.extra.get("cpu_ms_per_run")
    if threads == 1 and isinstance(cpu, (int, float)) and cpu > 0:
        return min(fastest, float(cpu))
    return fastest


def median_breakdown(bds: Sequence[HostBreakdown]) -> HostBreakdown:
    """Per (precision, class) median of the profiled time over several processes' breakdowns."""
    if len(bds) == 1:
        return bds[0]
    keys = sorted({(c.precision, c.op_class) for bd in bds for c in bd.classes})
    classes = []
    for p, c in keys:
        cts = [ct for bd in bds for ct in bd.classes if (ct.precision, ct.op_class) == (p, c)]
        times = [ct.host_ms for ct in cts] + [0.0] * (len(bds) - len(cts))
        classes.append(ClassTime(p, c, float(np.median(times)), cts[0].work, cts[0].nodes))
    mems = [bd.peak_memory_mb for bd in bds if bd.peak_memory_mb is not None]
    return HostBreakdown(tuple(classes), float(np.median(mems)) if mems else None,
                         int(np.median([bd.unmatched_nodes for bd in bds])))


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
    src = _src(
        f"edge-search calibrate --device host: {len(records)} suite model/precision pairs "
        f"({', '.join(sorted({r.family for r in records}))}) measured on {host_id}{note}"
    )
    params: dict[str, Sourced] = {}
    # end-to-end 1-thread latency = overhead + scale x (profiled sum - per-node profiler cost x nodes):
    # each profiled node is its fastest execution, and the sum of per-node fastest executions is below any
    # whole run (scale > 1); fitted on the relative error, scale within [0.5, 2]
    rows = [(r.e2e_ms[1], r.breakdown.host_ms, sum(c.nodes for c in r.breakdown.classes))
            for r in records if 1 in r.e2e_ms]
    overhead, scale, per_node_us = 0.0, 1.0, 0.0
    if len(rows) >= 3:
        e = np.array([row[0] for row in rows])
        prof = np.array([row[1] for row in rows])
        nodes = np.array([row[2] for row in rows], dtype=float)

        def resid(th: np.ndarray) -> np.ndarray:
            return (th[0] + th[1] * (prof - th[2] * nodes / 1000.0)) / e - 1.0

        sol = least_squares(resid, np.array([0.0, 1.0, 0.0]), bounds=([0.0, 0.5, 0.0], [np.inf, 2.0, np.inf]))
        overhead, scale, per_node_us = (float(v) for v in sol.x)
    params["overhead_ms"] = src(overhead)
    params["profile_overhead_us"] = src(per_node_us)
    params["profile_scale"] = src(scale)
    net = Calibration(source="fit", params={"profile_overhead_us": params["profile_overhead_us"],
                                            "profile_scale": params["profile_scale"]})
    by: dict[str, list[float]] = {}
    for r in records:
        for ct in r.breakdown.classes:
            p, c = ct.precision, ct.op_class
            for key in (f"rate.{p}.{c}", f"rate.{p}.{class_group(c)}"):
                acc = by.setdefault(key, [0.0, 0.0])
                acc[0] += ct.work
                acc[1] += net_host_ms(ct, net)
    for key, (work, ms) in sorted(by.items()):
        if work > 0 and ms > 0:
            params[key] = src(work / ms / 1e6)
    scaling: dict[str, dict[int, Sourced]] = {}
    for prec in sorted({r.precision for r in records}):
        ratios: dict[int, list[float]] = {}
        for r in records:
            if r.precision == prec and 1 in r.e2e_ms:
                for n, ms in r.e2e_ms.items():
                    if n > 1:
                        ratios.setdefault(n, []).append(r.e2e_ms[1] / ms)
        if ratios:
            scaling[prec] = {n: src(float(np.median(v))) for n, v in sorted(ratios.items())}
    cal = Calibration(
        source=src(0).source,
        runtime_note="measured on this host with ONNX Runtime",
        fitted_at=time.strftime("%Y-%m-%d"),
        reference_host=host_id,
        params=params,
        thread_scaling_by=scaling,
    )
    errs = [e for r in records for e in _host_errors(r, cal)]
    return cal.model_copy(
        update={
            "error_band": Sourced(
                value=round(_q90(errs), 4),
                source="90th percentile of |relative error| of the "
                "fitted host model on its own suite measurements",
            ),
            "fit_stats": {"n": float(len(errs)), "mape": float(np.mean(np.abs(errs))) if errs else math.nan},
        }
    )


def host_predict(r: SuiteRecord, cal: Calibration, threads: int, host: DeviceProfile | None = None) -> float:
    """Predicted end-to-end host latency of a measured record at `threads` (host carried to itself)."""
    prof = host or _bare_profile(cal)
    return carry(r.breakdown, prof, prof, threads).median_ms


def _host_errors(r: SuiteRecord, cal: Calibration) -> list[float]:
    return [host_predict(r, cal, n) / actual - 1.0 for n, actual in r.e2e_ms.items()]


def _bare_profile(cal: Calibration, cores: int = 64) -> DeviceProfile:
    return DeviceProfile.model_validate(
        {
            "name": "fit",
            "cpu": {"architecture": "x86_64", "core_type": "fit", "cores": cores, "clock_ghz": 1},
            "memory": {"ram_mb": 1024, "bandwidth_gb_s": 1, "reserve_mb": 0},
            "latency": {"method": "emulated"},
            "calibration": cal.model_dump(),
        }
    )


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
        rows.append(
            PublishedRow(
                d["device"],
                d["runtime"],
                d["model"],
                d["precision"],
                int(d["threads"]) if d["threads"] else None,
                float(d["latency_ms"]),
                d["source"],
            )
        )
    return rows


def _x(bd: HostBreakdown, host: Calibration) -> tuple[float, float]:
    """Host-normalised work (ms x host rate) of the compute and memory groups."""
    xc = xm = 0.0
    for c in bd.classes:
        prec = c.precision if c.precision != "fp16" else "fp32"
        r = host.rate(prec, c.op_class, class_group(c.op_class))
        if r is None:
            r = host.rate("fp32", c.op_class, class_group(c.op_class)) or 1.0
        ms = net_host_ms(c, host)
        if class_group(c.op_class) == "compute":
            xc += ms * r
        else:
            xm += ms * r
    return xc, xm


def fit_group_rates(
    data: Sequence[tuple[str, tuple[float, float], float]], host: Calibration
) -> tuple[float, dict[str, tuple[float, float]]]:
    """Least-squares fit (relative error) of one overhead and per-precision compute/memory rates.

    `data` holds (precision, host-normalised work (compute, memory), published ms) per model.
    Returns (overhead_ms, {precision: (compute GFLOP/s, memory GB/s)}).
    """
    precs = sorted({d[0] for d in data})
    ref = {
        p: (
            host.rate(p, "compute", "compute") or host.rate("fp32", "compute", "compute") or 1.0,
            host.rate(p, "memory", "memory") or host.rate("fp32", "memory", "memory") or 1.0,
        )
        for p in precs
    }
    y = np.array([d[2] for d in data])
    theta0 = [0.0]
    for p in precs:
        sel = [d for d in data if d[0] == p]
        rc, rm = ref[p]
        slow = float(np.median([d[2] / (d[1][0] / rc + d[1][1] / rm) for d in sel]))
        theta0 += [slow / rc, slow / rm]

    def resid(theta: np.ndarray) -> np.ndarray:
        pred = np.full(len(data), theta[0])
        priors = []
        for i, p in enumerate(precs):
            bc, bm = theta[1 + 2 * i], theta[2 + 2 * i]
            for j, d in enumerate(data):
                if d[0] == p:
                    pred[j] += bc * d[1][0] + bm * d[1][1]
            priors.append(PRIOR_WEIGHT * (math.log(bc * ref[p][0]) - math.log(bm * ref[p][1])))
        return np.concatenate([pred / y - 1.0, priors])

    lower = [0.0] + [1e-12] * (2 * len(precs))
    res = least_squares(resid, np.array(theta0), bounds=(lower, [np.inf] * len(lower)))
    rates = {p: (1.0 / res.x[1 + 2 * i], 1.0 / res.x[2 + 2 * i]) for i, p in enumerate(precs)}
    return float(res.x[0]), rates


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


ProxyTable = dict[tuple[str, str], HostBreakdown]
"""(published model name, precision) -> the single-thread host breakdown of its suite proxy."""

CPU_RUNTIME_PREFIX = "tflite"
GPU_RUNTIMES = ("tensorrt-fp16 (torch2trt)", "tensorrt-8.0 trtexec")


@dataclass
class BoardFit:
    """A fitted board calibration and its leave-one-model-out errors."""

    calibration: Calibration
    lomo_errors: Sequence[tuple[str, str, int | None, float, float]]
    """(model, precision, threads, published ms, predicted ms) per held-out prediction."""


def _cpu_fit(
    device: str,
    rows: Sequence[PublishedRow],
    proxies: ProxyTable,
    host: Calibration,
    exclude: str | None = None,
) -> tuple[float, dict[str, tuple[float, float]], dict[str, dict[int, float]]]:
    use = [r for r in rows if r.model != exclude]
    data = [
        (r.precision, _x(proxies[(r.model, r.precision)], host), r.latency_ms)
        for r in use
        if r.threads == 1 and (r.model, r.precision) in proxies
    ]
    if not data:
        raise InputError(f"no single-thread published rows with a suite proxy for device '{device}'")
    overhead, rates = fit_group_rates(data, host)
    curves = {p: thread_curve([r for r in use if r.precision == p]) for p in rates}
    return overhead, rates, curves


def _predict(
    bd: HostBreakdown,
    host: Calibration,
    overhead: float,
    rates: dict[str, tuple[float, float]],
    curves: dict[str, dict[int, float]],
    precision: str,
    threads: int,
) -> float:
    xc, xm = _x(bd, host)
    rc, rm = rates[precision]
    curve = {1: 1.0, **curves.get(precision, {})}
    s = curve.get(threads, curve[max(curve)])
    return overhead + (xc / rc + xm / rm) / s


def fit_board_cpu(
    profile: DeviceProfile,
    rows: Sequence[PublishedRow],
    proxies: ProxyTable,
    host: Calibration,
    csv_name: str,
) -> BoardFit:
    """CPU-path calibration of a board from published multi-thread figures, with LOMO errors."""
    mine = [r for r in rows if r.device == profile.name and r.runtime.startswith(CPU_RUNTIME_PREFIX)]
    overhead, rates, curves = _cpu_fit(profile.name, mine, proxies, host)
    errors = []
    for model in sorted({r.model for r in mine}):
        o, rt, cv = _cpu_fit(profile.name, mine, proxies, host, exclude=model)
        for r in mine:
            if r.model == model and (r.model, r.precision) in proxies and r.threads:
                pred = _predict(proxies[(r.model, r.precision)], host, o, rt, cv, r.precision, r.threads)
                errors.append((r.model, r.precision, r.threads, r.latency_ms, pred))
    runtimes = sorted({r.runtime for r in mine})
    models = sorted({r.model for r in mine})
    src_text = (
        f"fitted by edge-search calibrate --from-csv to {len(mine)} published figures in {csv_name} "
        f"({', '.join(runtimes)}; models {', '.join(models)}; sources: "
        f"{'; '.join(sorted({r.source for r in mine}))}), each model mapped to a suite proxy "
        f"(reference_suite.for_published) profiled on {host.reference_host or 'the host'}"
    )
    src = _src(src_text)
    params = {"overhead_ms": src(overhead)}
    for p, (rc, rm) in rates.items():
        params[f"rate.{p}.compute"] = src(rc)
        params[f"rate.{p}.memory"] = src(rm)
    by = {
        p: {n: _src(f"median T(1)/T({n}) over the published models, {p}")(v) for n, v in c.items()}
        for p, c in curves.items()
    }
    rel = [pred / pub - 1 for *_, pub, pred in errors]
    cal = Calibration(
        source=src_text,
        runtime_note="cross-runtime calibration: fitted to TFLite XNNPACK figures; "
        "predictions are for ONNX Runtime with the same model on this board",
        fitted_at=time.strftime("%Y-%m-%d"),
        reference_host=host.reference_host,
        params=params,
        thread_scaling=by.get("fp32", {}),
        thread_scaling_by=by,
        error_band=Sourced(
            value=round(_q90(rel), 4),
            source="90th percentile of |relative error| in "
            "leave-one-model-out prediction of the published figures",
        ),
        fit_stats=_figures(rel),
    )
    return BoardFit(cal, errors)


def fit_board_gpu(
    profile: DeviceProfile,
    rows: Sequence[PublishedRow],
    proxies: ProxyTable,
    host: Calibration,
    csv_name: str,
    base: Calibration,
) -> BoardFit:
    """Accelerator-path calibration (fp16 from TensorRT rows; fp32 by the published fp32/fp16 ratio)."""
    mine = [
        r
        for r in rows
        if r.device == profile.name and r.runtime in GPU_RUNTIMES and (r.model, "fp32") in proxies
    ]
    fp16 = [r for r in mine if r.precision == "fp16"]
    if not fp16:
        raise InputError(f"no published fp16 accelerator figures for device '{profile.name}'")

    def fit(use: Sequence[PublishedRow]) -> tuple[float, tuple[float, float]]:
        o, rates = fit_group_rates(
            [("fp32", _x(proxies[(r.model, "fp32")], host), r.latency_ms) for r in use], host
        )
        return o, rates["fp32"]

    o, (rc, rm) = fit(fp16)
    errors = []
    for model in sorted({r.model for r in fp16}):
        oo, (cc, mm) = fit([r for r in fp16 if r.model != model])
        for r in fp16:
            if r.model == model:
                xc, xm = _x(proxies[(r.model, "fp32")], host)
                errors.append((r.model, "fp16", None, r.latency_ms, oo + xc / cc + xm / mm))
    pairs = {r.model: r.latency_ms for r in mine if r.precision == "fp32"}
    ratios = [pairs[r.model] / r.latency_ms for r in mine if r.precision == "fp16" and r.model in pairs]
    ratio = float(np.median(ratios)) if ratios else 1.0
    rel = [pred / pub - 1 for *_, pub, pred in errors]
    src_text = (
        f"accelerator path fitted to {len(fp16)} published TensorRT fp16 figures in {csv_name} "
        f"({', '.join(sorted({r.runtime for r in fp16}))}); fp32 = fp16 rates / {ratio:.3f}, the "
        f"median published fp32/fp16 latency ratio ({len(ratios)} pairs)"
    )
    src = _src(src_text)
    params = dict(base.params)
    params.update(
        {
            "gpu.overhead_ms": src(o),
            "gpu.rate.fp16.compute": src(rc),
            "gpu.rate.fp16.memory": src(rm),
            "gpu.rate.fp32.compute": src(rc / ratio),
            "gpu.rate.fp32.memory": src(rm / ratio),
        }
    )
    band = max(_q90(rel), 0.5)
    cal = base.model_copy(
        update={
            "source": f"{base.source} | {src_text}" if base.source else src_text,
            "runtime_note": "cross-runtime calibration: GPU path fitted to TensorRT figures "
            "(torch2trt, trtexec); "
            "ONNX Runtime's TensorRT EP should come close, its CUDA EP is slower (published "
            "PyTorch-eager figures are 2-3x the TensorRT ones)",
            "params": params,
            "error_band_gpu": Sourced(
                value=round(band, 4),
                source="max(0.5, 90th percentile of |relative error| in "
                "leave-one-model-out prediction of the TensorRT fp16 figures): wide because "
                "the calibration is cross-runtime",
            ),
            "fit_stats": {**base.fit_stats, **{f"gpu_{k}": v for k, v in _figures(rel).items()}},
        }
    )
    return BoardFit(cal, errors)


def scale_calibration(
    base: Calibration,
    compute: float,
    memory: float,
    overhead: float,
    band_add: float,
    note: str,
    gpu: bool = False,
) -> Calibration:
    """A calibration inferred from another profile's by spec ratios (rates x factor), with a wider band."""
    prefix = "gpu." if gpu else ""
    params = {}
    for key, val in base.params.items():
        if gpu != key.startswith("gpu."):
            continue
        f = overhead if key.endswith("overhead_ms") else compute if key.endswith("compute") else memory
        params[key] = Sourced(
            value=round(val.value * f, 6), source=f"{note} (x{f:.3f} of: {val.source[:120]}...)"
        )
    band = base.error_band_gpu if gpu else base.error_band
    new_band = Sourced(
        value=round((band.value if band else 0.5) + band_add, 4),
        source=f"inferred profile: the source band widened by {band_add:g}",
    )
    upd: dict[str, Any] = {"params": {k: v for k, v in params.items() if k.startswith(prefix)}}
    if gpu:
        upd["error_band_gpu"] = new_band
    else:
        upd["error_band"] = new_band
    return base.model_copy(update=upd)


def _figures(rel: Sequence[float]) -> dict[str, float]:
    a = np.abs(np.asarray(rel, dtype=float))
    if a.size == 0:
        return {}
    return {
        "n": float(a.size),
        "mape": float(a.mean()),
        "within_10": float((a <= 0.10).mean()),
        "within_20": float((a <= 0.20).mean()),
    }


def write_calibration(path: Path, cal: Calibration) -> None:
    """Replace the ``calibration:`` block (kept last in the file) of a profile YAML, keeping the rest."""
    import yaml

    text = path.read_text()
    lines = text.splitlines()
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("calibration:")), len(lines))
    block = yaml.safe_dump(
        {"calibration": cal.model_dump(mode="json", exclude_defaults=True)},
        sort_keys=False,
        width=200,
        allow_unicode=True,
    )
    path.write_text("\n".join(lines[:cut]).rstrip() + "\n" + block)


# --- orchestration (what `edge-search calibrate` calls) -------------------------------------

CALIBRATION_CACHE = Path.home() / ".cache" / "edge-search" / "calibration"
#: Assumed A72/A57 per-clock speed ratio for the Jetson Nano CPU path (no published A57 figures).
A72_OVER_A57_IPC = 1.3
#: Assumed A78AE/A76 per-clock speed ratio for the Jetson Orin Nano CPU path.
A78_OVER_A76_IPC = 1.2


def host_id() -> str:
    """CPU model and ONNX Runtime version: what a host calibration is valid for."""
    from edge_search.devices.worker.probes import host_id as probe

    return probe()


def calibrate_host(
    host_profile: DeviceProfile,
    quick: bool = False,
    families: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[Calibration, list[SuiteRecord]]:
    """Measure the reference suite on this machine and fit the host calibration (see module docstring)."""
    from edge_search.devices.emulation.reference_suite import HOST_SUITE
    from edge_search.devices.local import LocalDevice

    models = [m for m in HOST_SUITE if families is None or m.family in families]
    if quick:
        models = models[::2]
    threads = tuple(range(1, min(host_profile.cpu.cores, 4) + 1))
    records = measure_suite(
        LocalDevice(host_profile),
        models,
        ("fp32",) if quick else ("fp32", "int8"),
        threads,
        runs=5 if quick else 10, repeats=1 if quick else 3,  # processes per model
        max_time_s=1.0 if quick else 1.5,
        progress=progress,
    )
    save_records(records, CALIBRATION_CACHE / "host-suite-last.json")
    return fit_host(records, host_id()), records


def proxy_breakdowns(
    keys: Iterable[tuple[str, str]], progress: Callable[[str], None] | None = None, cache: Path | None = None
) -> ProxyTable:
    """Single-thread host breakdowns of the suite proxies of published models (cached per host)."""
    import hashlib

    from edge_search.devices.emulation.reference_suite import for_published
    from edge_search.devices.local import LocalDevice
    from edge_search.devices.profile import get_profile

    cache = cache or CALIBRATION_CACHE / f"proxies-{hashlib.sha1(host_id().encode()).hexdigest()[:10]}.json"
    have = {(r.name, r.precision): r.breakdown for r in load_records(cache)} if cache.exists() else {}
    suite = {}
    for name, _ in keys:
        found = for_published(name)
        if found is not None:
            suite[name] = found
    todo = sorted({k for k in keys if k[0] in suite and k not in have})
    if todo:
        host = LocalDevice(get_profile("host"))
        for prec in sorted({p for _, p in todo}):
            names = [m for m, p in todo if p == prec]
            recs = measure_suite(host, [suite[m] for m in names], (prec,), (1,), runs=10,
                                 end_to_end=False, repeats=3, progress=progress)
            for m, rec in zip(names, recs, strict=True):
                have[(m, prec)] = rec.breakdown
        save_records(
            [SuiteRecord(m, suite[m].family if m in suite else "?", p, bd, {1: bd}, {}) for (m, p), bd in have.items()],
            cache,
        )
    return have


def calibrate_board(
    name: str,
    csv_path: Path,
    profiles: dict[str, DeviceProfile],
    progress: Callable[[str], None] | None = None,
) -> list[BoardFit]:
    """Fit board `name` from the published CSV (inferred boards from their source profiles)."""
    host = profiles["host"].calibration
    if not host.params:
        raise InputError(
            "the host profile is not calibrated: run `edge-search calibrate --device host` first"
        )
    rows = read_published(csv_path)
    if name == "jetson-orin-nano":
        pi5, nano = profiles["raspberry-pi-5"].calibration, profiles["jetson-nano"].calibration
        gpu_c = 2.56 / 0.472
        gpu_m = 68.0 / 25.6
        cpu = scale_calibration(
            pi5,
            1.5 / 2.4 * A78_OVER_A76_IPC,
            1.5 / 2.4 * A78_OVER_A76_IPC,
            1.0,
            0.3,
            f"inferred: Raspberry Pi 5 rates x clock 1.5/2.4 GHz x assumed A78AE/A76 "
            f"per-clock ratio {A78_OVER_A76_IPC}",
        )
        gpu = scale_calibration(
            nano,
            gpu_c,
            gpu_m,
            1.0,
            0.5,
            "inferred: Jetson Nano GPU rates x fp16 TFLOPS "
            "ratio 2.56/0.472 (compute) and bandwidth ratio 68/25.6 (memory)",
            gpu=True,
        )
        cal = cpu.model_copy(
            update={
                "params": {**cpu.params, **gpu.params},
                "error_band_gpu": gpu.error_band_gpu,
                "source": "inferred from spec ratios, no measurement of this board: CPU from "
                "raspberry-pi-5, GPU from jetson-nano (see each parameter's source)",
                "runtime_note": "inferred from other profiles by spec ratios (no published figures): "
                "very wide band",
                "fit_stats": {},
            }
        )
        return [BoardFit(cal, [])]
    keys = [
        (r.model, r.precision if r.precision != "fp16" else "fp32")
        for r in rows
        if r.device in (name, "raspberry-pi-4" if name == "jetson-nano" else name)
    ]
    proxies = proxy_breakdowns(keys, progress)
    if name == "jetson-nano":
        pi4 = fit_board_cpu(profiles["raspberry-pi-4"], rows, proxies, host, csv_path.name)
        f = 1.43 / 1.5 / A72_OVER_A57_IPC
        base = scale_calibration(
            pi4.calibration,
            f,
            f,
            1.0 / f,
            0.3,
            f"CPU path inferred from the Raspberry Pi 4 fit: x clock 1.43/1.5 GHz / assumed "
            f"A72/A57 per-clock ratio {A72_OVER_A57_IPC}",
        )
        base = base.model_copy(
            update={
                "source": f"CPU path inferred from raspberry-pi-4 ({pi4.calibration.source})",
                "fit_stats": {},
            }
        )
        return [fit_board_gpu(profiles[name], rows, proxies, host, csv_path.name, base), pi4]
    return [fit_board_cpu(profiles[name], rows, proxies, host, csv_path.name)]


__all__ = [
    "BoardFit",
    "PublishedRow",
    "SuiteRecord",
    "calibrate_board",
    "calibrate_host",
    "fit_board_cpu",
    "fit_board_gpu",
    "fit_group_rates",
    "fit_host",
    "host_predict",
    "load_records",
    "measure_suite",
    "median_breakdown",
    "proxy_breakdowns",
    "read_published",
    "save_records",
    "scale_calibration",
    "thread_curve",
    "write_calibration",
]
