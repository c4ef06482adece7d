"""The measurement engine inside a worker process: a fresh session, warm-up until steady, adaptive
repetitions, and the `LatencyStats` with its warnings (see the package docstring for the method)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_search.devices.base import MeasureRequest, SessionKnobs
from edge_search.devices.inputs import build_feeds, specs_from_session
from edge_search.devices.stats import LatencyStats, median_ci
from edge_search.devices.worker.probes import (
    PeakMemory,
    host_info,
    others_pct,
    read_cpu_times,
    read_schedstat,
    read_throttle,
    runq_wait_pct,
    steal_pct,
)
from edge_search.devices.worker.request import WorkerFailure, WorkerRequest, one_line
from edge_search.errors import InputError

ROBUST_CV_WARN = 0.10
"""`unstable` above this robust CV (1.4826 x MAD / median). The classic CV is not used: a handful of
10-100x outliers (a page fault, a timer) make it 1-12 for sub-millisecond models whose samples are
otherwise within 1 % (issue 14 study: mm005 CV 12.3, robust CV 1.0 %). 10 %, not 5 %: some models
alternate between two steady speeds within one quiet process (a 0.6 ms Gemm chain: robust CV 5.2 %,
quartiles at 0.97 and 1.14 of the median), which no repetition cures; contended 2-thread runs read
9-68 %."""
RUNQ_WARN_PCT = 20.0
"""`contended` above this share of the repetition phase that the measured threads waited for a CPU
(schedstat). Measured on a 2-core VM at load 7-12: 7-19 % for a worker in its own autogroup at -10,
40-77 % for one that is not; a quiet machine reads 0-2 %."""
STEAL_WARN_PCT = 1.0
FREQ_DROP_WARN = 0.15
OTHERS_WARN_PCT = 10.0
"""`contended` above this share of the pinned cores used by other processes, where schedstat is
missing (it counts work on cores the measurement does not use, so it over-warns)."""


def robust_cv(samples_ms: Sequence[float]) -> float:
    """1.4826 x median absolute deviation / median: the CV a normal distribution with the same
    body would have, blind to a few extreme outliers."""
    x = np.asarray(samples_ms, dtype=float)
    med = float(np.median(x))
    if med <= 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(x - med))) / med


def _session_options(wr: WorkerRequest, ort: Any, profile_prefix: str | None = None,
                     knobs: SessionKnobs | None = None) -> Any:
    """SessionOptions with every knob set explicitly from the request (`knobs`: another request's)."""
    knobs = knobs or wr.request.session
    so = ort.SessionOptions()
    so.intra_op_num_threads = knobs.intra_op_threads
    so.inter_op_num_threads = knobs.inter_op_threads
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[knobs.graph_optimization]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if knobs.execution_mode == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    spin = "1" if wr.allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3  # errors only: warnings go to stderr, never into results
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def _open_session(wr: WorkerRequest, ort: Any, so: Any, req: MeasureRequest | None = None) -> Any:
    """Create the session; any failure here is the model's (missing, corrupt, unsupported)."""
    req = req or wr.request
    path = Path(req.model_path)
    if not path.is_file():
        raise WorkerFailure("input", f"{path}: no such model file")
    wanted = list(req.session.providers)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=wanted)
    except Exception as err:  # InvalidProtobuf, Fail, InvalidGraph, NoSuchFile, ...
        kind = type(err).__name__
        raise WorkerFailure("input", f"{path}: cannot load ONNX model ({kind}): {one_line(str(err), 300)}"
                       ) from None
    # ONNX Runtime drops a provider it cannot register with only a log line and runs on the rest
    # (the CPU): that would be a CPU figure labelled as a GPU one, so it is refused here.
    dropped = [p for p in wanted if p not in session.get_providers()]
    if dropped:
        raise WorkerFailure("input", f"{path}: execution provider(s) {', '.join(dropped)} could not be used "
                                     f"here (the session got {', '.join(session.get_providers())}); refused "
                                     "rather than measured on a fallback")
    return session


def _feeds(wr: WorkerRequest, session: Any, req: MeasureRequest | None = None) -> dict[str, np.ndarray]:
    req = req or wr.request
    try:
        return build_feeds(specs_from_session(session), req.shapes, seed=wr.seed)
    except InputError as err:
        raise WorkerFailure("input", f"{req.model_path}: {err}") from None


def _first_run(req: MeasureRequest, run: Callable[[], Any]) -> float:
    """Time the first inference (ms); a failure means the inputs do not suit the model."""
    t0 = time.perf_counter_ns()
    try:
        run()
    except Exception as err:
        raise WorkerFailure("input", f"{req.model_path}: the model fails on inputs of shape "
                       f"{ {k: list(v) for k, v in req.shapes.items()} or 'as declared'}: "
                       f"{one_line(str(err), 300)}") from None
    return (time.perf_counter_ns() - t0) / 1e6


def warm_up(run: Callable[[], Any], first_ns: int, *, min_runs: int, min_s: float, max_s: float,
            drift: float) -> tuple[int, float, str]:
    """Warm up until steady; returns (runs including the first, seconds, "steady"|"cap").

    Phase 1 runs until both `min_runs` runs and `min_s` seconds are done. Phase 2 runs windows of
    about 0.1 s (5 to 50 runs) until a window's median is within `drift` of the previous window's
    median, or until `max_s` seconds of warm-up in total.
    """
    clock = time.perf_counter_ns
    times = [first_ns]
    t0 = clock() - first_ns
    min_ns, max_ns = int(min_s * 1e9), int(max(max_s, min_s) * 1e9)
    while len(times) < min_runs or clock() - t0 < min_ns:
        a = clock()
        run()
        times.append(clock() - a)
        if clock() - t0 >= max_ns:
            return len(times), (clock() - t0) / 1e9, "cap"
    later = times[1:] or times
    typical = float(np.median(later))
    window = int(min(50, max(5, 1e8 / max(typical, 1.0))))
    prev = float(np.median(later[-window:]))
    while clock() - t0 < max_ns:
        win: list[int] = []
        while len(win) < window and clock() - t0 < max_ns:
            a = clock()
            run()
            win.append(clock() - a)
        times.extend(win)
        if len(win) < window:
            break
        cur = float(np.median(win))
        if abs(cur - prev) <= drift * prev:
            return len(times), (clock() - t0) / 1e9, "steady"
        prev = cur
    return len(times), (clock() - t0) / 1e9, "cap"


def repeat_until_precise(run: Callable[[], Any], *, precision_target: float, max_time_s: float,
                         min_samples: int, max_samples: int, min_time_s: float = 0.0,
                         confidence: float = 0.95) -> tuple[list[int], str, float]:
    """Timed repetitions (ns) with adaptive stopping; returns (samples, stop_reason, seconds).

    After `min_samples` samples and `min_time_s` seconds (capped by `max_time_s`), the CI of the
    median is checked every max(5, n/20) samples; the loop stops on "precision" (half-width <=
    target x median), "time_cap" or "max_samples".
    """
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    start = clock()
    deadline = start + int(max_time_s * 1e9)
    earliest = start + int(min(min_time_s, max_time_s) * 1e9)
    next_check = max(min_samples, 2)
    reason = "time_cap"
    while True:
        a = clock()
        run()
        b = clock()
        append(b - a)
        n = len(samples)
        if n >= next_check and b >= earliest:
            lo, hi = median_ci(samples, confidence)
            med = float(np.median(samples))
            if med > 0 and (hi - lo) / 2.0 <= precision_target * med:
                reason = "precision"
                break
            next_check = n + max(5, n // 20)
        if n >= max_samples:
            reason = "max_samples"
            break
        if b >= deadline:
            break
    return samples, reason, (clock() - start) / 1e9


def _throttle_warning(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]]) -> str | None:
    bc, ac = before["throttle_count"], after["throttle_count"]
    hits = sum(ac[c] - bc[c] for c in ac if c in bc)
    if hits > 0:
        return f"throttled: {hits} thermal throttle events on the measured cores"
    bf, af = before["freq_khz"], after["freq_khz"]
    drops = [1 - af[c] / bf[c] for c in af if bf.get(c)]
    if drops and max(drops) > FREQ_DROP_WARN:
        return f"throttled: core frequency fell {max(drops):.0%} during the run"
    return None


def measure(wr: WorkerRequest, req: MeasureRequest | None = None) -> LatencyStats:
    """Measure one model (`req`, default the request's own) in this (already pinned) process; see
    the package docstring. The session is released before returning."""
    import onnxruntime as ort

    req = req or wr.request
    cores = sorted(os.sched_getaffinity(0))
    mem = PeakMemory()
    so = _session_options(wr, ort, knobs=req.session)
    mem.start()
    t0 = time.perf_counter_ns()
    session = _open_session(wr, ort, so, req)
    load_ms = (time.perf_counter_ns() - t0) / 1e6
    feeds = _feeds(wr, session, req)
    sess_run = session.run

    def run() -> Any:
        return sess_run(None, feeds)

    warm_start = time.perf_counter_ns()
    first_ms = _first_run(req, run)
    warm_runs, warm_s, warm_stop = warm_up(
        run, int(first_ms * 1e6), min_runs=req.warmup_min_runs, min_s=req.warmup_min_s,
        max_s=wr.warmup_max_s, drift=wr.warmup_drift)
    warm_s = (time.perf_counter_ns() - warm_start) / 1e9

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, thr0 = read_cpu_times(cores), read_throttle(cores)
    sched0 = read_schedstat()
    wall0 = time.time()
    samples_ns, reason, measure_s = repeat_until_precise(
        run, precision_target=req.precision_target, max_time_s=req.max_time_s,
        min_samples=req.min_samples, max_samples=req.max_samples, min_time_s=wr.min_measure_s)
    wall1 = time.time()
    sched1 = read_schedstat()
    cpu1, thr1 = read_cpu_times(cores), read_throttle(cores)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = mem.peak_mb()
    steal = steal_pct(cpu0, cpu1)
    own_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    others = others_pct(cpu0, cpu1, own_s)
    knobs = req.session
    threads = min(len(cores), knobs.intra_op_threads * (knobs.inter_op_threads if knobs.execution_mode == "parallel"
                                                        else 1))
    runq = runq_wait_pct(sched0, sched1, measure_s, threads)

    samples_ms = [s / 1e6 for s in samples_ns]
    first_input = next(iter(feeds.values()), None)
    batch = int(first_input.shape[0]) if first_input is not None and first_input.ndim >= 2 else 1
    stats = LatencyStats.from_samples(
        samples_ms, device=wr.device, source="measured", warmup_runs=warm_runs, warmup_ms=warm_s * 1e3,
        stop_reason=reason, session_load_ms=load_ms, first_run_ms=first_ms, peak_memory_mb=peak_mb,
        batch_size=max(batch, 1),
        knobs={**req.session.model_dump(mode="json"), "allow_spinning": wr.allow_spinning},
        host=host_info(cores, ort.__version__, steal),
        extra={
            "model_path": str(req.model_path),
            "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
            "warmup_stop": warm_stop,
            "measure_s": measure_s,
            "measure_started_at": wall0,
            "measure_ended_at": wall1,
            "precision_target": req.precision_target,
            "involuntary_ctx_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
            "cpu_ms_per_run": own_s * 1e3 / max(len(samples_ns), 1),  # this process's CPU time (all threads)
            "others_cpu_pct": others,
            "runq_wait_pct": runq,
            "robust_cv": robust_cv(samples_ms),
            "loadavg_1m": os.getloadavg()[0],
            "peak_memory_method": mem.method,
            "throttle_detectable": bool(thr0["throttle_count"] or thr0["freq_khz"]),
            "worker_pid": os.getpid(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "autogroup_nice": read_autogroup_nice(),
            "seed": wr.seed,
        },
    )
    warnings: list[str] = []
    rcv = float(stats.extra["robust_cv"])
    if rcv > ROBUST_CV_WARN:
        warnings.append(f"unstable: robust CV {rcv:.1%} > {ROBUST_CV_WARN:.0%}")
    n = len(samples_ms)
    if n < req.min_samples:
        warnings.append(f"too few samples: {n} < {req.min_samples} within the {req.max_time_s:g} s cap")
    if reason != "precision":
        warnings.append(f"precision target not reached: CI ±{stats.ci_halfwidth_rel:.1%} > "
                        f"±{req.precision_target:.1%} (stopped by {reason})")
    if steal is not None and steal > STEAL_WARN_PCT:
        warnings.append(f"CPU steal {steal:.1f}% during the run (> {STEAL_WARN_PCT:g}%): a noisy host")
    if runq is not None:
        if runq > RUNQ_WARN_PCT:
            warnings.append(f"contended: the measured threads waited {runq:.0f}% of the time for a CPU "
                            f"(> {RUNQ_WARN_PCT:g}%)")
    elif others is not None and others > OTHERS_WARN_PCT:
        warnings.append(f"contended: other processes used {others:.0f}% of the measured cores during the run")
    throttled = _throttle_warning(thr0, thr1)
    if throttled:
        warnings.append(throttled)
    if warm_stop != "steady":
        warnings.append(f"warm-up did not settle within {wr.warmup_max_s:g} s")
    del session
    return stats.model_copy(update={"warnings": tuple(warnings)})


def measure_rounds(wr: WorkerRequest) -> list[LatencyStats]:
    """``mode: rounds``: measure each request of ``wr.batch`` in order, one fresh session at a time,
    in this one process (a confirmation round: every configuration under the same conditions)."""
    return [measure(wr, req) for req in wr.batch]


def parse_profile_trace(trace: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Per-node mean kernel time over the last `runs` model runs of an ORT profiling trace.

    Node events (``cat: Node``, name ``<node>_kernel_time``) are kept when they start at or after the
    start of the `runs`-th last ``model_run`` event, so warm-up runs are excluded. Returns dicts with
    name, op_type, provider, mean_us and min_us (per execution) and count (executions), slowest first.
    """
    run_starts = sorted(e["ts"] for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run")
    if not run_starts:
        return []
    since = run_starts[-runs] if len(run_starts) >= runs else run_starts[0]
    acc: dict[str, dict[str, Any]] = {}
    suffix = "_kernel_time"
    for e in trace:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(suffix) or e.get("ts", -1) < since:
            continue
        args = e.get("args", {})
        node = name[: -len(suffix)]
        slot = acc.setdefault(node, {"name": node, "op_type": args.get("op_name", ""),
                                     "provider": args.get("provider", ""), "total": 0.0, "count": 0,
                                     "min": math.inf})
        slot["total"] += float(e.get("dur", 0))
        slot["count"] += 1
        slot["min"] = min(slot["min"], float(e.get("dur", 0)))
    nodes = [{"name": s["name"], "op_type": s["op_type"], "provider": s["provider"],
              "mean_us": s["total"] / s["count"], "min_us": s["min"], "count": s["count"]} for s in acc.values()]
    return sorted(nodes, key=lambda d: -d["mean_us"] * d["count"])


def profile(wr: WorkerRequest) -> dict[str, Any]:
    """Per-node timings with ORT's profiler: warm up as for `measure`, then `profile_runs` runs."""
    import onnxruntime as ort

    req = wr.request
    with tempfile.TemporaryDirectory(prefix="edge-search-profile-") as tmp:
        so = _session_options(wr, ort, profile_prefix=str(Path(tmp) / "ort"))
        session = _open_session(wr, ort, so)
        feeds = _feeds(wr, session)
        sess_run = session.run

        def run() -> Any:
            return sess_run(None, feeds)

        first_ms = _first_run(req, run)
        warm_runs, _, _ = warm_up(run, int(first_ms * 1e6), min_runs=req.warmup_min_runs,
                                  min_s=req.warmup_min_s, max_s=wr.warmup_max_s, drift=wr.warmup_drift)
        for _ in range(wr.profile_runs):
            run()
        trace_path = session.end_profiling()
        trace = json.loads(Path(trace_path).read_text())
    nodes = parse_profile_trace(trace, wr.profile_runs)
    return {"nodes": nodes, "runs": wr.profile_runs, "warmup_runs": warm_runs,
            "ort_version": ort.__version__, "cores_used": sorted(os.sched_getaffinity(0))}


AUTOGROUP = Path("/proc/self/autogroup")


def read_autogroup_nice() -> int | None:
    """The niceness of this process's autogroup (``/autogroup-N nice K``), None where there is none."""
    try:
        return int(AUTOGROUP.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def set_priority(nice: int | None, autogroup: bool = True) -> int:
    """Ask for `nice` (see `WorkerRequest.nice`); returns the niceness in effect.

    On a kernel with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, the default
    of most Linux distributions) CPU time is shared fairly between *sessions*, and a thread's nice
    value only orders it within its own session: a worker at nice -10 still got 25-45 % of a core
    against other sessions' work (issue 14 study, 2-core VM at load 7-12). So the worker also
    starts a session of its own and gives that autogroup the same niceness (both need privileges
    for a negative value; without them it keeps what it inherited). The value in effect is
    recorded as ``extra.autogroup_nice``.
    """
    if nice is not None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if autogroup and AUTOGROUP.exists():
            with contextlib.suppress(OSError):
                if os.getsid(0) != os.getpid():
                    os.setsid()
                AUTOGROUP.write_text(str(nice))
    return os.getpriority(os.PRIO_PROCESS, 0)


def run_request(wr: WorkerRequest) -> str:
    """Pin, set priority, then measure or profile; returns the result line (JSON)."""
    try:
        os.sched_setaffinity(0, wr.cores)
    except (OSError, ValueError) as err:
        raise WorkerFailure("input", f"cannot pin the worker to cores {list(wr.cores)}: {err}") from None
    set_priority(wr.nice, wr.autogroup)
    if wr.mode == "profile":
        return json.dumps(profile(wr))
    if wr.mode == "rounds":
        return json.dumps({"results": [json.loads(s.to_json()) for s in measure_rounds(wr)]})
    return measure(wr).to_json()
