"""A latency measurement made of several worker processes: the process is the unit of the interval.

One process's samples say how precisely *that process's* median is known (issue 14: eight fresh
runs of one model, 2.93-3.52 ms, each claiming ±1.5 %). So a measurement is `k` fresh worker
processes, and its figure and interval come from their medians, on a log scale:

    y_i = ln(median of process i),   centre = exp(mean y_i)            (the reported median)
    s_p^2 = (nu0 sigma_b^2 + sum (y_i - ybar)^2) / (nu0 + k - 1)     (own spread pooled with the prior)
    half-width = t(0.975, nu0 + k - 1) * sqrt(2 sigma_r^2 + 2 s_p^2 / k)

sigma_b, sigma_r and nu0 come from the host's `NoisePrior` (`edge_search.devices.noise`). The
interval is a 95 % *prediction* interval for an independent measurement made the same way at
another time: it contains such a measurement's figure about 95 % of the time (the question a user
asks of a latency figure), and the long-run median at least as often. The narrower interval of
the long-run median alone (``sqrt(sigma_r^2 + s_p^2 / k)``) is kept in ``extra["interval"]``.

Written here rather than taken from pyperf: pyperf's interval is the mean of many processes'
values (20 by default) with no prior and no regime term, which would cost a search 20 processes
per trial; scipy supplies the t quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_search.devices.noise import NoisePrior
from edge_search.devices.stats import LatencyStats, summarize

CONFIDENCE = 0.95
RETRY_WARNINGS = ("unstable:", "contended:")
"""Warning prefixes (set by the worker) that make `LocalDevice` replace a worker process (bounded)."""


def process_interval(medians: Sequence[float] | np.ndarray, prior: NoisePrior, confidence: float = CONFIDENCE
                     ) -> dict[str, float]:
    """Centre, prediction interval and its ingredients for the process medians of one measurement."""
    from scipy import stats as sps

    y = np.log(np.asarray(medians, dtype=float))
    k = int(y.size)
    if k == 0:
        raise ValueError("no process medians")
    ss = float(((y - y.mean()) ** 2).sum()) if k > 1 else 0.0
    df = prior.df + k - 1
    sp2 = (prior.df * prior.process_rsd ** 2 + ss) / df
    t = float(sps.t.ppf(0.5 + confidence / 2.0, df))
    hw = t * math.sqrt(2.0 * prior.regime_rsd ** 2 + 2.0 * sp2 / k)
    loc_hw = t * math.sqrt(prior.regime_rsd ** 2 + sp2 / k)
    c = float(y.mean())
    return {"centre_ms": math.exp(c), "low_ms": math.exp(c - hw), "high_ms": math.exp(c + hw),
            "location_low_ms": math.exp(c - loc_hw), "location_high_ms": math.exp(c + loc_hw),
            "processes": k, "process_rsd": math.sqrt(sp2), "own_rsd": math.sqrt(ss / (k - 1)) if k > 1 else 0.0,
            "regime_rsd": prior.regime_rsd, "df": df, "t": t, "confidence": confidence}


def _process_summary(s: LatencyStats, used: bool) -> dict[str, Any]:
    return {"median_ms": s.median_ms, "ci_low_ms": s.ci_low_ms, "ci_high_ms": s.ci_high_ms,
            "samples": len(s.samples_ms), "runq_wait_pct": s.extra.get("runq_wait_pct"),
            "robust_cv": s.extra.get("robust_cv"), "others_cpu_pct": s.extra.get("others_cpu_pct"),
            "warnings": list(s.warnings), "worker_pid": s.extra.get("worker_pid"), "used": used,
            "started_at": s.extra.get("measure_started_at")}


def combine_processes(used: Sequence[LatencyStats], prior: NoisePrior, *,
                      discarded: Sequence[LatencyStats] = (), confidence: float = CONFIDENCE) -> LatencyStats:
    """One `LatencyStats` from the worker processes of one measurement.

    `used` are the processes the figure rests on; `discarded` those replaced because they were
    flagged (kept in ``extra["processes"]`` with ``used: false``). The median is the geometric mean
    of the used processes' medians and the interval `process_interval`'s; percentiles, mean and
    stdev come from the pooled samples; warnings are those of the used processes (one per kind).
    ``extra["tries"]`` counts every process started, ``extra["discarded"]`` the replaced ones.
    """
    if not used:
        raise ValueError("no process results")
    first = used[0]
    iv = process_interval([s.median_ms for s in used], prior, confidence)
    pooled = [x for s in used for x in s.samples_ms]
    summary = summarize(pooled, confidence) if pooled else {}
    kinds: dict[str, str] = {}
    for s in used:
        for w in s.warnings:
            kinds.setdefault(w.split(":", 1)[0], w)
    if discarded:
        why = "; ".join(sorted({w.split(":", 1)[0] for d in discarded for w in d.warnings}))
        kinds.setdefault("retried", f"retried: {len(discarded)} flagged worker process(es) replaced ({why})")
    stop = next((s.stop_reason for s in used if s.stop_reason != "precision"), first.stop_reason)
    extra = {**first.extra,
             "processes": [_process_summary(s, True) for s in used] + [_process_summary(s, False)
                                                                        for s in discarded],
             "tries": len(used) + len(discarded), "discarded": len(discarded),
             "interval": {**iv, "method": "between-process prediction interval (edge_search.devices.processes)",
                          "prior_source": prior.source, "prior_process_rsd": prior.process_rsd,
                          "prior_df": prior.df}}
    steals = [s.host.steal_pct for s in used if s.host.steal_pct is not None]
    host = first.host.model_copy(update={"steal_pct": max(steals)}) if steals else first.host
    return first.model_copy(update={
        **summary, "samples_ms": tuple(pooled), "median_ms": iv["centre_ms"], "ci_low_ms": iv["low_ms"],
        "ci_high_ms": iv["high_ms"], "confidence": confidence,
        "warmup_runs": sum(s.warmup_runs for s in used), "warmup_ms": sum(s.warmup_ms for s in used),
        "stop_reason": stop, "session_load_ms": float(np.median([s.session_load_ms for s in used])),
        "first_run_ms": float(np.median([s.first_run_ms for s in used])),
        "peak_memory_mb": max(s.peak_memory_mb for s in used), "host": host,
        "warnings": tuple(kinds.values()), "extra": extra})


def needs_retry(stats: LatencyStats) -> bool:
    """A process whose figure the engine flags `contended` or `unstable` (worth measuring again)."""
    return any(w.startswith(RETRY_WARNINGS) for w in stats.warnings)


def contention(stats: LatencyStats) -> float:
    """How contended a process was (run-queue wait %, else others' share %), for picking the least
    contended of several flagged ones."""
    for key in ("runq_wait_pct", "others_cpu_pct"):
        v = stats.extra.get(key)
        if v is not None:
            return float(v)
    return 0.0
