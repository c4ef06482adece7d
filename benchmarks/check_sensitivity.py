#!/usr/bin/env python3
"""How small a slowdown does `edge-search check` detect on this machine, and how often does it cry wolf?

For each nominal slowdown (0 % = an identical copy of the model, then 2, 5, 10, 20 % of extra
work sized by FLOPs, see scripts/make_reference_model.py) and each repetition, the candidate and
the reference model are measured in ``--rounds`` interleaved rounds (A B, B A, ...), each in a
fresh worker process, exactly as `edge_search.check.runner.check_model` does, with the check's default
measurement settings. The rounds are recorded once, then the check's decision rule
(`edge_search.check.decisions.decide_relative`, adaptive: decided after ``min_rounds``, more rounds only
while a decision is a warning, up to ``--rounds``) is applied for a relative budget of +0 % and
of +5 %. Because the decision after k rounds only depends on the first k rounds, this is the
exact outcome a check with ``max_rounds = --rounds`` would have had.

For comparison it also reports what the naive rule would do: pool all raw samples per side into
one `LatencyStats` and call `compare(...).slower_than(0)` (a bootstrap over samples).

Prints a table and writes benchmarks/results/check_sensitivity.json. Runs in a private lock
folder (the default lease would queue behind other measurements on a shared machine), so other
processes may run beside it: the figures are for a noisy runner.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"+0%": 0.0, "+5%": 0.05}


def _adaptive(base: list[Any], cand: list[Any], allowed: float, min_rounds: int, max_rounds: int
              ) -> tuple[str, int]:
    """The check's rule on recorded rounds: (status, rounds used)."""
    from edge_search.check.budgets import Budget
    from edge_search.check.decisions import decide_relative

    budget = Budget("latency_ms", "relative", allowed, f"+{allowed:.0%}")
    k = min_rounds
    while True:
        d = decide_relative("bench", budget, base[:k], cand[:k], paired=True)
        if d.conclusive or k >= max_rounds:
            return d.status, k
        k += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slowdowns", type=float, nargs="+", default=[0.02, 0.05, 0.10, 0.20])
    parser.add_argument("--reps", type=int, default=3, help="checks per slowdown (default 3)")
    parser.add_argument("--identical-reps", type=int, default=20,
                        help="checks of an identical copy (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds recorded per check (= max_rounds)")
    parser.add_argument("--min-rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/check_sensitivity.json")
    args = parser.parse_args(argv)

    from edge_search.check.budgets import MeasurementSpec
    from edge_search.check.statistics import compare, pooled
    from edge_search.devices import create_device
    from edge_search.devices.base import MeasureRequest
    from edge_search.devices.profile import get_profile

    os.environ.setdefault("EDGE_SEARCH_LOCK_DIR", tempfile.mkdtemp(prefix="edge-search-bench-locks-"))
    build = runpy.run_path(str(ROOT / "scripts/make_reference_model.py"))["build_reference_model"]
    work = Path(tempfile.mkdtemp(prefix="check-sensitivity-"))
    ref = build(work / "ref.onnx")
    spec = MeasurementSpec()
    profile = get_profile("host")

    def measure(path: Path) -> Any:
        device = create_device(profile, warmup_max_s=0.5, min_measure_s=0.3)  # as `edge-search check`
        try:
            return device.measure(MeasureRequest(model_path=path, precision_target=spec.precision_target,
                                                 max_time_s=spec.max_time_s, warmup_min_s=0.1, priority=0))
        finally:
            device.close()

    plan = [(0.0, args.identical_reps)] + [(s, args.reps) for s in args.slowdowns]
    t_start = time.time()
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for slowdown, reps in plan:
        if slowdown == 0:
            cand_path = work / "identical.onnx"
            cand_path.write_bytes(ref.read_bytes())
        else:
            cand_path = build(work / f"slow{slowdown:g}.onnx", extra=slowdown)
        for rep in range(reps):
            base, cand, durations = [], [], []
            for r in range(args.rounds):
                t0 = time.monotonic()
                order = [("b", ref), ("c", cand_path)] if r % 2 == 0 else [("c", cand_path), ("b", ref)]
                for side, path in order:
                    (base if side == "b" else cand).append(measure(path))
                durations.append(time.monotonic() - t0)
            ratios = [c.median_ms / b.median_ms for b, c in zip(base, cand, strict=True)]
            row: dict[str, Any] = {"slowdown": slowdown, "rep": rep, "ratios": ratios,
                                   "base_median_ms": [b.median_ms for b in base],
                                   "lease_wait_s": sum(s.lease_wait_s for s in base + cand)}
            for label, allowed in BUDGETS.items():
                status, k = _adaptive(base, cand, allowed, args.min_rounds, args.rounds)
                row[label] = {"status": status, "rounds": k, "seconds": sum(durations[:k])}
            row["pooled_naive_fail_at_0"] = compare(pooled(base), pooled(cand)).slower_than(0.0)
            rows.append(row)
            naive = "FAIL" if row["pooled_naive_fail_at_0"] else "pass"
            print(f"slowdown {slowdown:>4.0%} rep {rep:>2}: ratio {np.exp(np.mean(np.log(ratios))):.3f} "
                  + " ".join(f"{lbl}={row[lbl]['status']}({row[lbl]['rounds']}r)" for lbl in BUDGETS)
                  + f" naive={naive}", file=sys.stderr, flush=True)

    summary: list[dict[str, Any]] = []
    for slowdown, _ in plan:
        sel = [r for r in rows if r["slowdown"] == slowdown]
        ratios = np.concatenate([np.log(r["ratios"]) for r in sel])
        entry: dict[str, Any] = {"slowdown": slowdown, "checks": len(sel),
                                 "measured_ratio": float(np.exp(ratios.mean())),
                                 "naive_pooled_fail_rate_at_0": float(np.mean([r["pooled_naive_fail_at_0"]
                                                                               for r in sel]))}
        for label in BUDGETS:
            st = [r[label]["status"] for r in sel]
            entry[label] = {"fail": st.count("fail"), "warn": st.count("warn"), "pass": st.count("pass"),
                            "mean_rounds": float(np.mean([r[label]["rounds"] for r in sel])),
                            "mean_seconds": float(np.mean([r[label]["seconds"] for r in sel]))}
        summary.append(entry)

    ref_ms = float(np.median([m for r in rows for m in r["base_median_ms"]]))
    header = " | ".join(f"budget {lbl}: fail/warn/pass  rounds  s/check" for lbl in BUDGETS)
    lines = [f"check sensitivity on {platform.node()} ({os.cpu_count()} cores), reference model "
             f"{ref.stat().st_size / 1e6:.1f} MB, median {ref_ms:.3f} ms; rounds: min {args.min_rounds}, "
             f"max {args.rounds}",
             f"{'slowdown':>8} {'checks':>6} {'measured':>8} | {header} | naive pooled fail@+0%"]
    for e in summary:
        cells = []
        for lbl in BUDGETS:
            c = e[lbl]
            cells.append(f"{c['fail']:>2}/{c['warn']:>2}/{c['pass']:>2}"
                         f"{'':>19}{c['mean_rounds']:>5.1f} {c['mean_seconds']:>8.1f}")
        lines.append(f"{e['slowdown']:>8.0%} {e['checks']:>6} {e['measured_ratio'] - 1:>+8.1%} | "
                     + " | ".join(cells) + f" | {e['naive_pooled_fail_rate_at_0']:>6.0%}")
    lines.append(f"wall time {time.time() - t_start:.0f} s; load average {load_start[0]:.2f} at start, "
                 f"{os.getloadavg()[0]:.2f} at end")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "host": {"node": platform.node(), "cores": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "settings": {"rounds": args.rounds, "min_rounds": args.min_rounds, "measurement": spec.model_dump(),
                     "budgets": BUDGETS, "reference_model_bytes": ref.stat().st_size},
        "summary": summary, "rows": rows, "table": lines, "wall_s": time.time() - t_start}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
