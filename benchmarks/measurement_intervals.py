"""Do latency intervals hold up? Coverage of an independent fresh measurement, and the cost, of the
measurement before and after issue 14, side by side in one run.

Run: ``python benchmarks/measurement_intervals.py [--rounds 8] [--quick]``. Models built here (Gemm
chains of about 0.2 and 1 ms and a small conv net of a few ms at one thread), each at 1 and 2
intra-op threads: six groups. Each round measures every group with both methods, the order of the
methods alternating from round to round (this machine is shared: ratios and coverage are only
comparable when measured interleaved):

* ``before``: the engine as it was before issue 14: one worker process (0.5 s of repetitions, a
  warm-up capped at 2 s, nice -10 in the caller's autogroup) and the interval it reported, the
  order-statistic CI of that one process's median;
* ``after``: today's `LocalDevice`: two fresh workers in their own autogroup (0.25 s, 1 s cap),
  flagged workers replaced (at most 2), the between-process prediction interval with this host's
  noise model (a noise store of the benchmark's own, so it starts from the defaults and learns as
  the run goes).

Reported per method: coverage = the share of ordered pairs (i, j) of measurements of one group
where i's 95 % interval contains j's figure (the issue: "95 % intervals must contain an
independent fresh measurement's median about 95 % of the time"), the median half-width, the wall
time per measurement (the lease-held interval: every worker, its start-up and its retries), the
workers started, and the warnings. What it cannot do: make this machine quiet; the load average is
recorded with every figure. The old engine's `scipy.stats` import (0.5-1.4 s per worker, now gone)
is not in the ``before`` cost: both methods run today's worker code, so the ``before`` cost is a
lower bound.

Figures go to stdout and ``benchmarks/results/measurement_intervals.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench import RESULTS, WORK, host_info, loadavg, write_json
from edge_search.devices.base import MeasureRequest, SessionKnobs
from edge_search.devices.local import LocalDevice
from edge_search.devices.noise import HostNoise
from edge_search.devices.profile import get_profile
from edge_search.devices.stats import LatencyStats
from tests.devices.conftest import gemm_chain
from tests.devices.tiny_conv import tiny_conv


def models(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"gemm-0.2ms": gemm_chain(folder / "g02.onnx", layers=4, width=512, batch=8),
            "gemm-1ms": gemm_chain(folder / "g1.onnx", layers=4, width=512, batch=32),
            "conv-net": tiny_conv(folder / "conv.onnx", size=96, channels=48)}


def figure_and_interval(method: str, s: LatencyStats) -> tuple[float, float, float]:
    """(figure, interval low, interval high) as each method reports it."""
    if method == "before":  # one process: its own median and the CI of that median
        p = s.extra["processes"][0]
        return float(p["median_ms"]), float(p["ci_low_ms"]), float(p["ci_high_ms"])
    return s.median_ms, s.ci_low_ms, s.ci_high_ms


def coverage(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairwise coverage within each group, pooled, and per group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    hits = total = 0
    per: dict[str, float] = {}
    for g, rs in groups.items():
        h = sum(a["low"] <= b["figure"] <= a["high"] for a in rs for b in rs if a is not b)
        n = len(rs) * (len(rs) - 1)
        per[g] = h / n if n else float("nan")
        hits, total = hits + h, total + n
    return {"coverage": hits / total if total else float("nan"), "pairs": total, "by_group": per}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="measurements per group and method (default 8)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 1 thread only")
    args = ap.parse_args()
    rounds = 3 if args.quick else args.rounds
    threads = (1,) if args.quick else (1, 2)
    work = WORK / "measurement_intervals"
    paths = models(work / "models")
    noise_path = work / "noise.json"
    noise_path.unlink(missing_ok=True)
    profile = get_profile("host")
    devices = {
        "before": LocalDevice(profile, processes=1, max_retries=0, min_measure_s=0.5, warmup_max_s=2.0,
                              autogroup=False, noise=HostNoise(work / "unused.json")),
        "after": LocalDevice(profile, noise=HostNoise(noise_path)),
    }
    info = host_info()
    print(f"host: {info}", flush=True)
    records: list[dict[str, Any]] = []
    t0 = time.time()
    for r in range(rounds):
        for name, path in paths.items():
            for t in threads:
                req = MeasureRequest(model_path=path, session=SessionKnobs(intra_op_threads=t), max_time_s=5.0)
                for method in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    s = devices[method].measure(req)
                    fig, lo, hi = figure_and_interval(method, s)
                    records.append({"round": r, "group": f"{name}/{t}t", "method": method, "figure": fig,
                                    "low": lo, "high": hi, "wall_s": s.ended_at - s.started_at,
                                    "tries": int(s.extra.get("tries", 1)), "warnings": list(s.warnings),
                                    "runq": [p.get("runq_wait_pct") for p in s.extra.get("processes", [])],
                                    "loadavg_1m": os.getloadavg()[0]})
        print(f"round {r + 1}/{rounds} done, {time.time() - t0:.0f} s, load {loadavg()}", flush=True)
    results: dict[str, Any] = {"host": info, "rounds": rounds, "threads": threads, "models": list(paths),
                               "methods": {}}
    for method in ("before", "after"):
        rs = [r for r in records if r["method"] == method]
        cov = coverage(rs)
        hw = [(r["high"] - r["low"]) / 2 / r["figure"] for r in rs]
        walls = [r["wall_s"] for r in rs]
        flagged = sum(any(w.startswith(("contended", "unstable")) for w in r["warnings"]) for r in rs)
        results["methods"][method] = {
            **cov, "median_halfwidth_rel": statistics.median(hw), "wall_s_median": statistics.median(walls),
            "wall_s_mean": statistics.fmean(walls), "workers_started_mean": statistics.fmean(r["tries"] for r in rs),
            "flagged_used": flagged, "measurements": len(rs)}
        m = results["methods"][method]
        print(f"{method:6s}: coverage {m['coverage']:.1%} of {m['pairs']} pairs; median half-width "
              f"{m['median_halfwidth_rel']:.1%}; wall per measurement median {m['wall_s_median']:.2f} s "
              f"(mean {m['wall_s_mean']:.2f}); workers per measurement {m['workers_started_mean']:.2f}; "
              f"used while flagged {flagged}/{len(rs)}", flush=True)
        print("        by group: " + ", ".join(f"{g} {v:.0%}" for g, v in cov["by_group"].items()), flush=True)
    b, a = results["methods"]["before"], results["methods"]["after"]
    results["cost_ratio_after_over_before"] = a["wall_s_median"] / b["wall_s_median"]
    results["learned_prior"] = {str(t): HostNoise(noise_path).prior(t).__dict__ for t in threads}
    results["records"] = records
    results["loadavg_end"] = loadavg()
    results["elapsed_s"] = time.time() - t0
    print(f"cost: after / before = {results['cost_ratio_after_over_before']:.2f} (median wall per measurement); "
          f"learned noise model: {results['learned_prior']}")
    write_json("measurement_intervals", results)
    print(f"wrote {RESULTS / 'measurement_intervals.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
