"""Scale-out: the same 16-trial digits study three ways, side by side in one run.

(a) the embedded Optuna driver in one process, (b) Ray Tune with 2 workers, (c) two
`edge-search run` processes sharing one PostgreSQL study. Prints wall time, trials per minute,
the speed-up over (a), the share of time spent training, and whether any two latency
measurements overlapped (none may: every measurement holds the device lease).

The space trains for longer than the built-in one (training dominates, as it does for real
models) and measures quickly. Each arm gets its own artifact cache, so none reuses another's work.

    python benchmarks/scale_out.py [--trials 16] [--postgres URL]

Needs the `ray` and `postgres` extras and a PostgreSQL server (`.ci/run` shows how to start one);
an arm whose back-end is missing is reported as skipped, not silently dropped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

SPACE = """\
schema_version: 1
name: digits-scale
task: digits-cnn
train:
  lr: {low: 0.003, high: 0.03, log: true}
  epochs: {low: 40, high: 60}
  width: {choices: [1.0, 2.0]}
  depth: {low: 2, high: 3}
  batch_size: 32
deploy:
  precision: {choices: [fp32, int8-dynamic]}
  intra_op_threads: 1
objectives: [accuracy, latency_ms]
"""
FAST = ["--max-measure-time", "1", "--precision-target", "0.05", "--sampler", "random"]


def _run(cmds: list[list[str]], cwd: Path) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(p.args)} failed:\n{out[-3000:]}")  # type: ignore[arg-type]
    return wall


def _summarise(name: str, storage: str, study: str, wall: float, base: float | None) -> dict[str, object]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    spans = sorted({(t.user_attrs["latency"]["started_at"], t.user_attrs["latency"]["ended_at"]) for t in done})
    overlaps = sum(1 for (_, e), (s, _) in itertools.pairwise(spans) if s < e)
    train_s = sum(t.user_attrs["timings"]["train"] for t in done)
    measure_s = sum(t.user_attrs["timings"]["measure"] for t in done)
    row = {"arm": name, "complete": len(done), "wall_s": round(wall, 1),
           "trials_per_min": round(60 * len(done) / wall, 2),
           "speedup_vs_a": round(base / wall, 2) if base else 1.0,
           "train_s": round(train_s, 1), "measure_s": round(measure_s, 1),
           "measurements": len(spans), "overlapping_measurements": overlaps}
    print(f"{name:<28} {len(done):>3} trials  {wall:7.1f} s  {row['trials_per_min']:>6} trials/min  "
          f"x{row['speedup_vs_a']:<5} train {train_s:6.1f} s  measure {measure_s:5.1f} s  "
          f"overlapping measurements: {overlaps}", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--postgres", default="postgresql://edge:edge@127.0.0.1:5432/edge_search_test")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="es-scale-"))
    (work / "space.yaml").write_text(SPACE)
    exe = [sys.executable, "-m", "edge_search", "run", "--space", "space.yaml", "--trials", str(args.trials), *FAST]
    rows: list[dict[str, object]] = []
    print(f"work dir {work}; {args.trials} trials per arm", flush=True)

    wall_a = _run([[*exe, "--study", "a", "--cache-dir", "cache-a"]], work)
    rows.append(_summarise("(a) optuna, 1 process", "sqlite:///" + str(work / "edge-search.db"), "a", wall_a, None))

    try:
        import ray  # noqa: F401

        wall_b = _run([[*exe, "--study", "b", "--cache-dir", "cache-b", "--backend", "ray", "--workers", "2"]], work)
        rows.append(_summarise("(b) ray, 2 workers", "sqlite:///" + str(work / "edge-search.db"), "b", wall_b, wall_a))
    except ModuleNotFoundError:
        print("(b) skipped: ray is not installed (pip install 'edge-search[ray]')")

    study_c = f"c-{uuid.uuid4().hex[:8]}"
    try:
        optuna.storages.RDBStorage(args.postgres)
    except Exception as err:  # no driver or no server
        print(f"(c) skipped: no PostgreSQL at {args.postgres} ({type(err).__name__})")
    else:
        cmd_c = [*exe, "--study", study_c, "--storage", args.postgres, "--cache-dir", "cache-c"]
        wall_c = _run([[*cmd_c, "--seed", "1"], [*cmd_c, "--seed", "2"]], work)
        rows.append(_summarise("(c) 2 processes, PostgreSQL", args.postgres, study_c, wall_c, wall_a))

    out = Path(__file__).parent / "results" / "scale_out.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"trials": args.trials, "arms": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
