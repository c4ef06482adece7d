"""Sample efficiency: hypervolume against number of trials for random search, TPE, NSGA-II and GP.

Two spaces, 5 seeds per sampler, one fixed reference point per space:

* ``digits``: the built-in digits CNN task with its training knobs discretised (epochs 4/12,
  width 0.5/1/2, depth 1/2/3) and the deploy knobs precision (fp32, int8 dynamic, int8 static),
  structured channel pruning (0 / 0.5, 2 fine-tune epochs) and intra-op threads (1/2): 216
  configurations; objectives accuracy (max) and median latency on ``host`` (min).
* ``mobilenet``: deployment only, over the MobileNetV2-style model of ``examples/`` (224x224, random
  weights, exported by ``examples/run_byom_demo.py``'s `export_models`): precision, per-channel,
  nodes kept in fp32 (int8 only), intra-op threads and graph optimisation level: 52
  configurations; objectives fidelity_top1 to the fp32 model (max) and median latency (min).

**Method (read this before quoting a figure).** Running 4 samplers x 5 seeds x 160 trials of real
training and measurement is far beyond a 2-core machine. So every configuration of each (small,
discrete) space is first evaluated **once for real** through edge-search's own `Pipeline` (train,
prune, quantise, evaluate with ONNX Runtime, measure in a pinned worker; artifact cache under
``benchmarks/.work``). Then each sampler/seed runs a real Optuna study built exactly as
``edge-search run`` builds it (`make_sampler`, the space's own `suggest_config`) whose objective
returns the *measured* values of the sampled configuration. Two modes, side by side in one run:
``before`` (edge-search before issue 14: a repeat proposal costs a trial, answered from the cache;
the sampler starts from nothing) and ``after`` (today's driver: the study starts with the
informative first configurations of `edge_search.seeds`, a repeat proposal is told infeasible and
not counted, so the x axis counts *distinct* configurations, and a grid that is exhausted ends the
study; see `benchmarks._bench.run_lookup_study`). What this does not capture: measurement noise
between repeats of one configuration (each has one measurement) and
continuous knobs (the grid is discrete, which favours random search relative to a real space).

Hypervolume: of all complete trials so far, exact (the dashboards' helper), against a fixed
reference point per space: the nadir of the whole grid's Pareto front pushed out by 10 % of the
front's range in each objective (a reference at the worst configuration makes every sampler reach
~99 % within 10 trials and says nothing). Reported as a share of the hypervolume of the grid's
front (1.0 = the true front found) and, in the figure, as the gap 1 - share on a log axis.
Target from the issue: the default sampler (TPE) reaches within 40 trials the
median hypervolume random search reaches in 160. Reported three ways: today's TPE against today's
random search over 160 *distinct* configurations without first configurations (plain random
search: the target as the issue means it), against random search with today's first
configurations too (the hardest), against the old random search (160 trials with repeats), and
the old TPE against the old random search.

    python benchmarks/sample_efficiency.py [--trials 160] [--seeds 5] [--gp-trials 40] [--gp-seeds 3]
                                           [--from-grid]   # reuse results/sample_efficiency_grid_*.csv

GP is capped (40 trials, 3 seeds by default): Optuna's GPSampler fits a Gaussian process per
proposal, ~2-3 s per trial on this 2-core machine, so 5 x 160 trials per space would take hours.
Evaluating the grids costs about 9 minutes (digits, 216 configurations) and 5 (MobileNetV2, 52).

Writes benchmarks/results/sample_efficiency.json, sample_efficiency_curves.csv,
sample_efficiency_grid_<space>.csv and sample_efficiency.html (plotly, self-contained).
Run from the repository root (or anywhere: paths are resolved from this file).
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    evaluate_grid,
    host_info,
    hypervolume_curve,
    load_grid_csv,
    loadavg,
    run_lookup_study,
    to_losses,
    write_csv,
    write_figure,
    write_json,
)

DIGITS_SPACE = """\
schema_version: 1
name: bench-digits
task: digits-cnn
seed: 0
train:
  lr: 0.01
  weight_decay: 1.0e-4
  batch_size: 64
  epochs: {choices: [4, 12]}
  width: {choices: [0.5, 1.0, 2.0]}
  depth: {choices: [1, 2, 3]}
deploy:
  precision: {choices: [fp32, int8-dynamic, int8-static]}
  channel_prune: {choices: [0.0, 0.5]}
  finetune_epochs: 2
  intra_op_threads: {choices: [1, 2]}
objectives: [accuracy, latency_ms]
"""

MOBILENET_SPACE = """\
schema_version: 1
name: bench-mobilenet-v2
task:
  name: onnx
  options:
    model: {root}/examples/out/mobilenet_v2.onnx
    data: {root}/examples/out/mobilenet_v2.npz
    metric: fidelity_top1
    eval_size: 64
deploy:
  precision: {{choices: [fp32, int8-dynamic, int8-static]}}
  per_channel: {{choices: [false, true], when: {{precision: [int8-static, int8-dynamic]}}}}
  keep_fp32: {{choices: [none, first_last, depthwise], when: {{precision: [int8-static, int8-dynamic]}}}}
  calibration_size: 16
  intra_op_threads: {{choices: [1, 2]}}
  graph_optimization: {{choices: [basic, all]}}
objectives: [fidelity_top1, latency_ms]
"""

SAMPLERS = ("random", "tpe", "nsga2", "gp")
MODES = ("before", "distinct", "after")
"""``before``: repeats count as trials, no first configurations (edge-search before issue 14);
``distinct``: repeats not counted, no first configurations; ``after``: the driver of today, repeats
not counted and the first configurations of `edge_search.seeds` (see `run_lookup_study`)."""
CHECKPOINTS = (10, 20, 40, 80, 160)


def ensure_mobilenet() -> None:
    if not (ROOT / "examples/out/mobilenet_v2.onnx").exists():
        from examples.run_byom_demo import export_models

        export_models()


def write_space(name: str, text: str) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{name}.yaml"
    path.write_text(text)
    return path


def reference_of(space: Any, rows: list[dict[str, Any]]) -> list[float]:
    """The grid front's nadir pushed out by 10 % of the front's range in each objective (fixed per
    space): hypervolume then measures how well a study approximates the true front, not how far it
    got from the worst configuration (which every sampler beats within a few trials)."""
    dirs = space.directions
    losses = np.array([to_losses([float(r[n]) for n in space.objective_names], dirs) for r in rows])
    front = losses[[not any(np.all(q <= p) and np.any(q < p) for q in losses) for p in losses]]
    nadir, ideal = front.max(0), front.min(0)
    ref_losses = nadir + 0.1 * np.where(nadir > ideal, nadir - ideal, np.abs(nadir) + 1e-12)
    return [-float(v) if d == "maximize" else float(v) for v, d in zip(ref_losses, dirs, strict=True)]


def trials_to_reach(runs: list[list[float]], level: float) -> int | None:
    """First trial count at which the median over seeds reaches `level` (None: never within the runs)."""
    med = np.median(np.array(runs), axis=0)
    hits = np.nonzero(med >= level - 1e-6)[0]  # the curves CSV rounds to 6 decimals
    return int(hits[0]) + 1 if len(hits) else None


def spread(values: list[float]) -> dict[str, float]:
    q = np.percentile(values, [25, 75])
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "q25": float(q[0]), "q75": float(q[1])}


def run_space(label: str, space_path: Path, args: argparse.Namespace,
              measure_s: float) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[list[float]]]]:
    from edge_search.devices import thread_cores
    from edge_search.devices.profile import get_profile
    from edge_search.space import load_space

    space = load_space(space_path)
    cores = thread_cores(get_profile("host", []))
    grid_csv = RESULTS / f"sample_efficiency_grid_{label}.csv"
    t0 = time.perf_counter()
    load0: list[float] | None = loadavg()
    load_end: list[float] | None
    meta_path = grid_csv.with_suffix(".json")
    if args.from_grid and grid_csv.exists():
        rows = load_grid_csv(grid_csv)
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        grid_wall, load0, load_end = meta.get("wall_s"), meta.get("loadavg_start"), meta.get("loadavg_end")
        print(f"[{label}] {len(rows)} configurations read from {grid_csv.relative_to(ROOT)}")
    else:
        print(f"[{label}] evaluating every configuration once for real (load {load0})", flush=True)
        rows = evaluate_grid(space_path, WORK / "cache", max_measure_s=measure_s, precision_target=0.05)
        grid_wall = time.perf_counter() - t0
        load_end = loadavg()
        write_csv(grid_csv.stem, rows)
        meta_path.write_text(json.dumps({"wall_s": grid_wall, "loadavg_start": load0, "loadavg_end": load_end}))
    if args.grid_only:
        return {"space": space.name, "configurations": len(rows), "grid_eval_wall_s": grid_wall}, rows, {}
    table = {str(r["key"]): r for r in rows}
    dirs = space.directions
    ref = reference_of(space, rows)
    grid_hv = hypervolume_curve([[float(r[n]) for n in space.objective_names] for r in rows], dirs, ref)[-1]
    curves: dict[str, list[list[float]]] = {}
    stats: dict[str, Any] = {}
    for mode in MODES:
        for sampler in SAMPLERS:
            n = args.gp_trials if sampler == "gp" else args.trials
            seeds = args.gp_seeds if sampler == "gp" else args.seeds
            if n < 1 or seeds < 1 or (sampler == "gp" and mode != "after" and not args.gp_before):
                continue
            name = sampler if mode == "after" else f"{sampler}-{mode}"
            t = time.perf_counter()
            curves[name] = []
            for seed in range(seeds):
                vals = run_lookup_study(space, table, sampler, seed, n, cores, mode=mode)
                hv = [h / grid_hv for h in hypervolume_curve(vals, dirs, ref)]
                curves[name].append(hv + [hv[-1]] * (n - len(hv)))  # the grid ran out: the front stays
            sampler_s = time.perf_counter() - t
            stats[name] = {"mode": mode, "trials": n, "seeds": seeds, "sampler_wall_s": round(sampler_s, 1), "at": {
                str(c): spread([cv[c - 1] for cv in curves[name]]) for c in CHECKPOINTS if c <= n}}
            at = stats[name]["at"]
            print(f"[{label}] {name:13s} " + "  ".join(
                f"@{c}: {at[c]['median']:.3f} [{at[c]['min']:.3f}-{at[c]['max']:.3f}]" for c in at)
                + f"   ({sampler_s:.0f} s for {seeds} seeds)", flush=True)
    target: dict[str, Any] = {}
    for tpe_name, rand_name in (("tpe", "random-distinct"), ("tpe", "random"), ("tpe", "random-before"),
                                ("tpe-before", "random-before")):
        rand = stats.get(rand_name, {}).get("at", {}).get("160")
        tpe40 = stats.get(tpe_name, {}).get("at", {}).get("40")
        if not (rand and tpe40):
            continue
        key = f"{tpe_name}@40 vs {rand_name}@160"
        target[key] = {"tpe_at_40_median": tpe40["median"], "random_at_160_median": rand["median"],
                       "met": tpe40["median"] >= rand["median"] - 1e-9,
                       "trials_to_reach": {s: trials_to_reach(c, rand["median"]) for s, c in curves.items()}}
        print(f"[{label}] target {key} (medians): {tpe40['median']:.4f} vs {rand['median']:.4f} -> "
              f"{'MET' if target[key]['met'] else 'NOT MET'}; trials for the median to reach it: "
              f"{target[key]['trials_to_reach']}", flush=True)
    summary = {"space": space.name, "configurations": len(rows), "objectives": space.objective_names,
               "directions": dirs, "reference": dict(zip(space.objective_names, ref, strict=True)),
               "grid_front_hypervolume": grid_hv, "grid_eval_wall_s": grid_wall,
               "grid_eval_loadavg_start": load0, "grid_eval_loadavg_end": load_end,
               "grid_trial_s_median": statistics.median(float(r["trial_s"]) for r in rows),
               "samplers": stats, "target": target}
    return summary, rows, curves


def figure(results: dict[str, Any], curves: dict[str, dict[str, list[list[float]]]]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    labels = list(curves)
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=[
        f"{results[lb]['space']} ({results[lb]['configurations']} configs)" for lb in labels])
    colours = {"random": "#7f7f7f", "tpe": "#1f77b4", "nsga2": "#2ca02c", "gp": "#d62728"}
    colours.update({f"{k}-{m}": v for k, v in list(colours.items()) for m in ("before", "distinct")})
    for col, lb in enumerate(labels, start=1):
        for sampler, runs in curves[lb].items():
            arr = np.maximum(1.0 - np.array(runs), 1e-4)  # hypervolume gap to the grid's front
            x = list(range(1, arr.shape[1] + 1))
            c = colours[sampler]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(arr.max(0)) + list(arr.min(0))[::-1], fill="toself",
                                     fillcolor=c, opacity=0.15, line={"width": 0}, showlegend=False,
                                     hoverinfo="skip", legendgroup=sampler), row=1, col=col)
            fig.add_trace(go.Scatter(x=x, y=list(np.median(arr, 0)), name=sampler,
                                     line={"color": c, "dash": "dot" if sampler.endswith("-before") else (
                                         "dash" if sampler.endswith("-distinct") else "solid")},
                                     legendgroup=sampler, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="trials", type="log", row=1, col=col)
        fig.update_yaxes(title_text="1 - hypervolume / grid front's (floor 1e-4)", type="log", row=1, col=col)
    fig.update_layout(title="Sample efficiency: hypervolume gap, median over seeds, band = min-max", height=500)
    return fig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=160)
    p.add_argument("--gp-trials", type=int, default=40,
                   help="GP costs ~2-3 s per trial here (a GP fit per proposal): capped separately")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--gp-seeds", type=int, default=3)
    p.add_argument("--grid-only", action="store_true", help="evaluate the grids, run no sampler")
    p.add_argument("--from-grid", action="store_true", help="reuse the grid CSVs in benchmarks/results")
    p.add_argument("--only", choices=["digits", "mobilenet"], default=None)
    p.add_argument("--gp-before", action="store_true", help="also run GP the old way (slow)")
    args = p.parse_args()
    info = host_info()
    print(f"host: {info}")
    results: dict[str, Any] = {"host": info, "method": "grid evaluated once for real, samplers replayed "
                               "against the measured values (see the script's docstring)"}
    curves: dict[str, dict[str, list[list[float]]]] = {}
    long_rows: list[dict[str, Any]] = []
    jobs = [("digits", DIGITS_SPACE, 0.5), ("mobilenet", MOBILENET_SPACE.format(root=ROOT), 1.0)]
    for label, text, measure_s in jobs:
        if args.only and args.only != label:
            continue
        if label == "mobilenet":
            ensure_mobilenet()
        results[label], _, curves[label] = run_space(label, write_space(f"sample-efficiency-{label}", text),
                                                     args, measure_s)
        for sampler, runs in curves[label].items():
            for seed, cv in enumerate(runs):
                long_rows += [{"space": label, "sampler": sampler, "seed": seed, "trial": i + 1,
                               "hv_share": round(v, 6)} for i, v in enumerate(cv)]
    results["loadavg_end"] = loadavg()
    if args.grid_only:
        print(f"grids evaluated: {results}")
        return 0
    write_json("sample_efficiency" + (f"_{args.only}" if args.only else ""), results)
    write_csv("sample_efficiency_curves" + (f"_{args.only}" if args.only else ""), long_rows)
    path = write_figure("sample_efficiency" + (f"_{args.only}" if args.only else ""), figure(results, curves))
    print(f"wrote {RESULTS.relative_to(ROOT)}/sample_efficiency*.json|csv and {path.relative_to(ROOT)}; "
          f"load average at end {results['loadavg_end']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
