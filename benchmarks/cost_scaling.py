"""Cost per trial, broken down, and how the platform's own commands scale with the study's size.

Part 1, cost per trial: a real ``edge-search run --device host --trials 10`` of the built-in
digits-cnn space (random sampler, seed 0, an empty artifact cache, measurement capped at 1 s),
run as the CLI in a fresh folder. Each trial's recorded stage ``timings`` (trial user attr) give
training (train + prune/fine-tune), transforms, evaluation and measurement; **per-trial platform
overhead** is the trial's duration (start to tell) minus its stages (asking the sampler, building
the config, opening/closing its MLflow child run); **process overhead** is the command's wall time
minus the trials' durations (start-up and imports, opening the study and parent run, Pareto tags
after each trial, the dashboards logged at the end, invalid configurations).

Part 2, scaling: studies of 10, 100 and 1,000 trials made from the real trials of part 1: each
synthetic trial copies a real one (params, distributions, constraints, user attrs) with its
objective values jittered (accuracy +-N(0, 0.01), latency and size x lognormal(0, 0.15), seeded),
added with Optuna's ``study.add_trials``, and a **real MLflow child run** per trial written with
edge-search's own `Tracker` (params, metrics, tags, ``latency_stats.json``). Then the front is tagged
(`StudySession.update_front(full=True)`, what every run does at start and end) and
``edge-search pareto`` and ``edge-search report`` are timed as subprocesses (Python start-up and
imports included: what a user waits for), 3 repeats, median, as wall time and as the process's CPU
time (user + system; steadier on a shared machine). Target: both under 10 s at 1,000.

    python benchmarks/cost_scaling.py [--sizes 10 100 1000] [--repeats 3]

Writes benchmarks/results/cost_scaling.json, cost_scaling_trials.csv (per-trial breakdown),
cost_scaling.csv (scaling) and cost_scaling.html. Takes about 3 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench import (
    RESULTS,
    ROOT,
    WORK,
    host_info,
    loadavg,
    write_csv,
    write_figure,
    write_json,
)

FOLDER = WORK / "cost"
CATEGORIES = {"training": ("train", "prune", "gate"), "transforms": ("transform",),
              "evaluation": ("evaluate",), "measurement": ("measure",)}


def edge_search(*args: str, cwd: Path) -> tuple[float, float, str]:
    """Run the CLI; returns (wall s, CPU s of the process: user + system, stdout). On a shared
    machine the CPU time is the steadier figure: wall time grows with everyone else's load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edge_search", *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"edge-search {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, proc.stdout


def real_study(trials: int) -> dict[str, Any]:
    import optuna

    shutil.rmtree(FOLDER, ignore_errors=True)
    FOLDER.mkdir(parents=True)
    load0 = loadavg()
    wall, cpu, _ = edge_search("run", "--device", "host", "--trials", str(trials), "--sampler", "random", "--seed", "0",
                          "--max-measure-time", "1", "--study", "cost-real", cwd=FOLDER)
    study = optuna.load_study(study_name="cost-real", storage=f"sqlite:///{FOLDER}/edge-search.db")
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        timings = t.user_attrs.get("timings") or {}
        assert t.datetime_complete is not None and t.datetime_start is not None
        dur = (t.datetime_complete - t.datetime_start).total_seconds()
        row: dict[str, Any] = {"trial": t.number, "duration_s": dur}
        for cat, stages in CATEGORIES.items():
            row[f"{cat}_s"] = sum(float(timings.get(s, 0.0)) for s in stages)
        row["platform_s"] = dur - sum(float(v) for v in timings.values())
        row.update({f"cache_hit.{k}": v for k, v in (t.user_attrs.get("cache_hits") or {}).items()})
        rows.append(row)
    durations = sum(r["duration_s"] for r in rows)
    cats = [*(f"{c}_s" for c in CATEGORIES), "platform_s"]
    per_trial = {c: {"median": statistics.median(r[c] for r in rows), "mean": statistics.fmean(r[c] for r in rows)}
                 for c in [*cats, "duration_s"]}
    total = {c: sum(r[c] for r in rows) for c in cats}
    total["process_overhead_s"] = wall - durations
    return {"wall_s": wall, "cpu_s": cpu, "trials": len(rows), "asked": len(study.trials), "per_trial": per_trial,
            "total_s": total, "share": {k: v / wall for k, v in total.items()},
            "loadavg_start": load0, "loadavg_end": loadavg(), "rows": rows}


def synthetic_study(n: int, rng: np.random.Generator) -> dict[str, Any]:
    """A study of `n` trials cloned from the real one, with real MLflow child runs."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from edge_search.records import TrialRecord
    from edge_search.space import load_space
    from edge_search.study import StudySession, make_storage
    from edge_search.tracking import Tracker

    storage_url = f"sqlite:///{FOLDER}/scale.db"
    tracking = f"sqlite:///{FOLDER}/scale-mlflow.db"
    storage = make_storage(storage_url)
    tracker = Tracker(tracking)
    real = optuna.load_study(study_name="cost-real", storage=f"sqlite:///{FOLDER}/edge-search.db")
    src = real.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    real_tracker = Tracker(f"sqlite:///{FOLDER}/mlflow.db")
    stats_text = {t.number: real_tracker.read_text(t.user_attrs[TrialRecord.RUN_ID], "latency_stats.json")
                  for t in src}
    space = load_space(None)
    session = StudySession.open(space=space, device="host", profile_version="1", study_name=f"scale-{n}",
                                storage=storage, sampler_name="random", seed=0, tracker=tracker)
    t0 = time.perf_counter()
    new: list[Any] = []
    for i in range(n):
        s = src[i % len(src)]
        acc, lat, size = s.values
        values = [float(np.clip(acc + rng.normal(0, 0.01), 0, 1)), lat * float(rng.lognormal(0, 0.15)),
                  size * float(rng.lognormal(0, 0.15))]
        metrics = {**s.user_attrs["metrics"], "accuracy": values[0], "latency_ms": values[1], "size_mb": values[2]}
        run_id = tracker.start_trial(session.experiment_id, session.parent_run_id, i,
                                     s.user_attrs["config_params"], {"device": "host"})
        tracker.finish_trial(run_id, "COMPLETE", {**metrics, **{f"time_{k}_s": v for k, v in
                                                               s.user_attrs["timings"].items()}},
                             {"latency_source": "measured", "device": "host"}, step=i)
        tracker.log_text(run_id, stats_text[s.number], "latency_stats.json")
        viol = [0.9 - values[0], *s.user_attrs["constraint_violations"][1:]]  # space: accuracy >= 0.9
        constraints = dict(s.constraints)
        constraints[str(space.constraints[0])] = viol[0]
        new.append(create_trial(state=TrialState.COMPLETE, values=values, params=s.params,
                                distributions=s.distributions,
                                user_attrs={**s.user_attrs, "metrics": metrics, TrialRecord.RUN_ID: run_id,
                                            "constraint_violations": viol},
                                system_attrs={k: v for k, v in s.system_attrs.items() if "constraint" not in k},
                                constraints=constraints))
    session.study.add_trials(new)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    front = session.update_front(full=True)
    tag_s = time.perf_counter() - t1
    session.tracker.finish_parent(session.parent_run_id)
    return {"storage": storage_url, "tracking": tracking, "build_s": build_s, "front": len(front),
            "update_front_full_s": tag_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10, help="finished trials of the real study (part 1)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    info = host_info()
    print(f"host: {info}")
    print(f"part 1: edge-search run --trials {args.trials} (load {loadavg()})", flush=True)
    real = real_study(args.trials)
    rows = real.pop("rows")
    pt = real["per_trial"]
    print(f"  wall {real['wall_s']:.1f} s for {real['trials']} finished trials ({real['asked']} asked); "
          f"load {real['loadavg_start'][0]} -> {real['loadavg_end'][0]}")
    print("  per trial (median / mean s): " + ", ".join(
        f"{k.removesuffix('_s')} {v['median']:.2f}/{v['mean']:.2f}" for k, v in pt.items()))
    print("  share of wall: " + ", ".join(f"{k.removesuffix('_s')} {v:.0%}" for k, v in real["share"].items()))
    os.chdir(FOLDER)  # MLflow's default artifact root (./mlruns) is the study folder, as for a user
    scaling: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for n in args.sizes:
        load0 = loadavg()
        syn = synthetic_study(n, rng)
        study = f"scale-{n}"
        pareto = [edge_search("pareto", "--study", study, "--storage", syn["storage"], cwd=FOLDER)
                  for _ in range(args.repeats)]
        report = [edge_search("report", "--study", study, "--storage", syn["storage"], "--tracking-uri",
                              syn["tracking"], "-o", str(FOLDER / f"report-{n}.html"), cwd=FOLDER)
                  for _ in range(args.repeats)]
        report_out = report[-1][2]
        row = {"trials": n, "front": syn["front"], "pareto_s": statistics.median(r[0] for r in pareto),
               "pareto_cpu_s": statistics.median(r[1] for r in pareto),
               "pareto_s_all": json.dumps([round(r[0], 2) for r in pareto]),
               "report_s": statistics.median(r[0] for r in report),
               "report_cpu_s": statistics.median(r[1] for r in report),
               "report_s_all": json.dumps([round(r[0], 2) for r in report]),
               "update_front_full_s": syn["update_front_full_s"], "build_with_mlflow_s": syn["build_s"],
               "mlflow_write_per_trial_s": syn["build_s"] / n,
               "report_mb": (FOLDER / f"report-{n}.html").stat().st_size / 1e6,
               "loadavg_start": load0[0], "loadavg_end": loadavg()[0]}
        scaling.append(row)
        print(f"  {n:5d} trials (front {syn['front']}): pareto {row['pareto_s']:.2f} s wall / "
              f"{row['pareto_cpu_s']:.2f} s CPU, report {row['report_s']:.2f} s wall / {row['report_cpu_s']:.2f} s CPU "
              f"({report_out.strip()}), update_front(full) {row['update_front_full_s']:.2f} s, MLflow writes "
              f"{row['mlflow_write_per_trial_s'] * 1000:.0f} ms/trial; load {load0[0]} -> {row['loadavg_end']}",
              flush=True)
    at_max = scaling[-1]
    verdict = {"trials": at_max["trials"], "pareto_under_10s": at_max["pareto_s"] < 10,
               "report_under_10s": at_max["report_s"] < 10}
    met = {k: "MET" if v else "NOT MET" for k, v in verdict.items() if k != "trials"}
    print(f"target (< 10 s at {at_max['trials']} trials): pareto {met['pareto_under_10s']}, "
          f"report {met['report_under_10s']}")
    write_json("cost_scaling", {"host": info, "real_study": real, "scaling": scaling, "target": verdict,
                                "loadavg_end": loadavg()})
    write_csv("cost_scaling_trials", rows)
    write_csv("cost_scaling", scaling)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["seconds per trial, by stage (real study)",
                                                        "command time against study size"])
    cats = [*(f"{c}_s" for c in CATEGORIES), "platform_s"]
    for c in cats:
        fig.add_trace(go.Bar(x=[str(r["trial"]) for r in rows], y=[r[c] for r in rows], name=c.removesuffix("_s")),
                      row=1, col=1)
    for key in ("pareto_s", "pareto_cpu_s", "report_s", "report_cpu_s", "update_front_full_s"):
        fig.add_trace(go.Scatter(x=[r["trials"] for r in scaling], y=[r[key] for r in scaling], mode="lines+markers",
                                 name=key.removesuffix("_s")), row=1, col=2)
    fig.update_layout(barmode="stack", height=500, title="Cost per trial and scaling")
    fig.update_xaxes(title_text="trial", row=1, col=1)
    fig.update_xaxes(title_text="trials in the study", type="log", row=1, col=2)
    fig.update_yaxes(title_text="s", row=1, col=1)
    fig.update_yaxes(title_text="s", row=1, col=2)
    path = write_figure("cost_scaling", fig)
    print(f"wrote {RESULTS.relative_to(ROOT)}/cost_scaling*.json|csv and {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
