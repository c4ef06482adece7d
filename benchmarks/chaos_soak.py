"""Chaos soak: a shared study on PostgreSQL under random SIGKILL/SIGSTOP of workers and agents.

Two ``edge-search run`` worker processes share one study (PostgreSQL for the study and the MLflow
store) and measure through two loopback agents (``edge-search agent serve`` on 127.0.0.1, one
machine, so their measurements share this machine's device lease). Every U(10, 30) s a chaos loop
SIGKILLs (restarted 1-3 s later) or SIGSTOPs (SIGCONTed 1 s to 2.5 grace periods later) a random
healthy worker or agent, its whole process group or its main process only. At the end it checks:
exactly N complete trials; no trial RUNNING; one FINISHED MLflow child run per complete trial (the
one it names) and none left RUNNING; no two measurements overlapping on the device; the study
resumes (`--trials N+2` adds exactly two). It prints the figures: faults by kind, trials failed
and redone, retries, re-measurements after a lost lease, wall time, and the time from freezing a
worker to the redo of its trial running elsewhere.

    python benchmarks/chaos_soak.py [--trials 100] [--postgres URL] [--seed 0]

Needs a PostgreSQL server where the URL's user may create databases (``$EDGE_SEARCH_TEST_POSTGRES``
by default; `.ci/run` shows how to start one); two fresh databases are created and dropped.
Results: benchmarks/results/chaos_soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from edge_search.testing.chaos import ChaosSoak, SoakConfig, random_schedule, soak_databases

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "chaos_soak.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--postgres", default=os.environ.get("EDGE_SEARCH_TEST_POSTGRES",
                                                        "postgresql://edge:edge@127.0.0.1:5432/edge_search_test"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-every", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN_S", "MAX_S"))
    p.add_argument("--heartbeat-interval", type=int, default=2)
    p.add_argument("--grace-period", type=int, default=10)
    p.add_argument("--lease-ttl", type=float, default=4.0)
    p.add_argument("--max-wall", type=float, default=3600.0, help="give up after this many seconds")
    p.add_argument("--keep", type=Path, default=None, help="keep logs and stores in this folder")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="es-chaos-"))
    with soak_databases(args.postgres) as (storage, tracking):
        cfg = SoakConfig(root=root, storage=storage, tracking_uri=tracking, trials=args.trials,
                         heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
                         lease_ttl_s=args.lease_ttl, max_wall_s=args.max_wall, seed=args.seed)
        t0 = time.time()
        with ChaosSoak(cfg, random_schedule(*args.fault_every, seed=args.seed)) as soak:
            soak.run()
            problems = soak.check(args.trials)
            resumed = soak.resume(extra=2)
            if resumed.returncode != 0:
                problems.append(f"resume exited {resumed.returncode}: {resumed.stderr[-500:]}")
            problems += [f"after resume: {p}" for p in soak.check(args.trials + 2)]
            figures = soak.figures()
    result = {"benchmark": "chaos_soak", "at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
              "cores": os.cpu_count(), "invariants_hold": not problems, "problems": problems,
              "faults_log": [{"at_s": round(f.at, 1), "target": f.target, "signal": f.signal, "group": f.group,
                              "pause_s": round(f.pause_s, 1), "held_trials": f.held_trials} for f in soak.faults],
              **figures}
    print(json.dumps({k: v for k, v in result.items() if k != "faults_log"}, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"logs: {root}", file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
