"""Multi-fidelity payoff: the same study with and without cheap screens, as hypervolume per minute.

Four arms of one real ``edge-search run`` study (digits CNN on ``host``, TPE, same seed, same
number of *finished* trials, each arm with an empty artifact cache of its own, so no arm reuses
another's training or measurements):

* ``full``: every configuration is trained, transformed, evaluated and measured.
* ``latency-gate``: ``RunOptions(latency_gate=True)`` (``edge-search run --latency-gate``): before
  training, the untrained network is measured with the trial's deploy knobs; when even the low end
  of its latency interval misses the space's latency constraint the trial is stopped (pruned),
  untrained.
* ``gate+early-stop``: the latency gate plus ``--early-stop`` (``RunOptions(early_stop=True)``): at
  power-of-two epochs, training stops when at least two finished trials at least as fast were
  clearly more accurate on validation at that epoch (dominated part-way through).
* ``graph-gate``: the same gate, but the untrained network's latency comes from the graph-only
  cost model (`edge_search.devices.emulated.estimate_graph`: FLOPs/bytes over the host's calibrated
  rates, nothing executed) instead of a measurement. The product has no switch for this, so the
  benchmark swaps in a `Pipeline` subclass (`GraphGatePipeline`, below) for this arm only; no
  product code changes. It gates when the estimate's interval (twice the profile's error band)
  lies wholly above the constraint.

Training is made longer than the built-in space's (epochs 30/60) so that, as for real models,
training costs more than a measurement; the latency constraint is set so some deploy
configurations (int8 dynamic's ConvInteger kernels, two threads on a tiny model) miss it.
Hypervolume: feasible trials (accuracy >= 0.9, latency within the bound), exact, with a fixed
reference (accuracy 0.9, latency = the bound); hypervolume per minute = final hypervolume / wall
minutes of the arm (the whole `run_search` call, start-up and MLflow logging included).

    python benchmarks/multi_fidelity.py [--trials 12] [--seed 0] [--bound-ms 0.02]

Writes benchmarks/results/multi_fidelity.json, multi_fidelity.csv (one row per trial) and
multi_fidelity.html. Takes about 5 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench import (
    RESULTS,
    ROOT,
    WORK,
    host_info,
    hypervolume_curve,
    loadavg,
    write_csv,
    write_figure,
    write_json,
)
from edge_search.config import DeployConfig
from edge_search.devices.stats import LatencyStats
from edge_search.pipeline import GatedOut, Pipeline

SPACE = """\
schema_version: 1
name: bench-multifidelity
task: digits-cnn
seed: 0
train:
  lr: {{low: 0.003, high: 0.03, log: true}}
  epochs: {{choices: [30, 60]}}
  width: {{choices: [1.0, 2.0]}}
  depth: {{choices: [2, 3]}}
  batch_size: 32
deploy:
  precision: {{choices: [fp32, int8-dynamic, int8-static]}}
  intra_op_threads: {{choices: [1, 2]}}
objectives: [accuracy, latency_ms]
constraints:
  - accuracy >= 0.9
  - latency_ms <= {bound}
"""


class GraphGatePipeline(Pipeline):
    """The latency gate with the graph-only estimate in place of measuring the untrained network."""

    def _gate(self, params: dict[str, Any], deploy: DeployConfig) -> LatencyStats:
        from edge_search.devices.emulation.carry import estimate_graph

        untrained = {**params, "epochs": 0}
        key, model, _ = self._train(untrained)
        gate_deploy = deploy.model_copy(update={"finetune_epochs": 0})
        key, model, _ = self._prune(key, model, untrained, gate_deploy)
        deploy_dir, _ = self._transform(key, model, gate_deploy)
        stats = estimate_graph(deploy_dir / "model.onnx", self.profile, gate_deploy.session(),
                               self.task.input_shapes(deploy.batch_size))
        for c in self.latency_constraints:
            value = stats.ci_low_ms if c.metric == "latency_ms" else stats.summary()[c.metric]
            if not c.satisfied(value):
                raise GatedOut(f"graph gate: estimated {c.metric} {stats.median_ms:.4g} ms "
                               f"(low {stats.ci_low_ms:.4g}), constraint {c}; not trained")
        return stats


def run_arm(name: str, space_path: Path, trials: int, seed: int) -> dict[str, Any]:
    import optuna

    import edge_search.run as run_module
    from edge_search.run import RunOptions, run_search

    folder = WORK / "multi_fidelity" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    opts = RunOptions(device="host", space=str(space_path), trials=trials, seed=seed, sampler="tpe",
                      storage=f"sqlite:///{folder}/edge-search.db", tracking_uri=f"sqlite:///{folder}/mlflow.db",
                      cache_dir=folder / "cache", max_measure_s=1.0, precision_target=0.05,
                      latency_gate=name != "full", early_stop=name == "gate+early-stop")
    original = run_module.Pipeline
    if name == "graph-gate":
        setattr(run_module, "Pipeline", GraphGatePipeline)  # noqa: B010
    load0 = loadavg()
    t0 = time.perf_counter()
    try:
        summary = run_search(opts, progress_stream=None)
    finally:
        setattr(run_module, "Pipeline", original)  # noqa: B010
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=summary.study, storage=opts.storage)
    trials_all = sorted(study.trials, key=lambda t: t.number)
    start = min(t.datetime_start for t in trials_all if t.datetime_start).timestamp()
    rows = []
    for t in trials_all:
        viol = t.user_attrs.get("constraint_violations")
        feasible = t.state == optuna.trial.TrialState.COMPLETE and viol is not None and all(v <= 0 for v in viol)
        rows.append({"arm": name, "trial": t.number, "state": t.state.name,
                     "stopped": t.user_attrs.get("stopped", ""), "feasible": feasible,
                     "accuracy": t.values[0] if t.values else None, "latency_ms": t.values[1] if t.values else None,
                     "t_end_s": (t.datetime_complete.timestamp() - start) if t.datetime_complete else None,
                     **{f"time_{k}_s": v for k, v in (t.user_attrs.get("timings") or {}).items()}})
    return {"wall_s": wall, "loadavg_start": load0, "loadavg_end": loadavg(), "rows": rows,
            "stage_s": summary.stage_s, "complete": summary.complete,
            "asked": len(trials_all), "gated": sum(1 for r in rows if r["stopped"] == "latency-gate"),
            "stopped_early": sum(1 for r in rows if r["stopped"] and r["stopped"] != "latency-gate")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bound-ms", type=float, default=0.02, help="latency_ms constraint (median, host)")
    p.add_argument("--arms", nargs="+", default=["full", "latency-gate", "gate+early-stop", "graph-gate"])
    args = p.parse_args()
    info = host_info()
    print(f"host: {info}")
    WORK.mkdir(parents=True, exist_ok=True)
    space_path = WORK / "multi-fidelity.yaml"
    space_path.write_text(SPACE.format(bound=args.bound_ms))
    ref = [0.9, args.bound_ms]
    dirs = ["maximize", "minimize"]
    results: dict[str, Any] = {"host": info, "trials": args.trials, "seed": args.seed, "bound_ms": args.bound_ms,
                               "reference": {"accuracy": ref[0], "latency_ms": ref[1]}, "arms": {}}
    all_rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for arm in args.arms:
        print(f"[{arm}] running {args.trials} finished trials (load {loadavg()})", flush=True)
        res = run_arm(arm, space_path, args.trials, args.seed)
        rows = res.pop("rows")
        done = [r for r in rows if r["t_end_s"] is not None]
        done.sort(key=lambda r: r["t_end_s"])
        pts = [[r["accuracy"], r["latency_ms"]] if r["feasible"] else None for r in done]
        hv = hypervolume_curve(pts, dirs, ref)
        final = hv[-1] if hv else 0.0
        res.update({"hypervolume": final, "hypervolume_per_min": final / (res["wall_s"] / 60),
                    "feasible": sum(1 for r in rows if r["feasible"])})
        results["arms"][arm] = res
        curves[arm] = ([r["t_end_s"] / 60 for r in done], hv)
        all_rows += rows
        print(f"[{arm}] wall {res['wall_s']:.0f} s, {res['complete']} finished of {res['asked']} asked "
              f"({res['gated']} stopped by the gate, {res['stopped_early']} stopped early), "
              f"{res['feasible']} feasible, hypervolume {final:.6g}, "
              f"per minute {res['hypervolume_per_min']:.6g}; stages "
              + ", ".join(f"{k} {v:.0f} s" for k, v in res["stage_s"].items())
              + f"; load {res['loadavg_start'][0]} -> {res['loadavg_end'][0]}", flush=True)
    write_json("multi_fidelity", results)
    write_csv("multi_fidelity", all_rows)
    import plotly.graph_objects as go

    fig = go.Figure()
    for arm, (x, y) in curves.items():
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", line={"shape": "hv"}, name=arm))
    fig.update_layout(title="Hypervolume (feasible trials) against wall-clock minutes",
                      xaxis_title="minutes since the first trial started", yaxis_title="hypervolume")
    path = write_figure("multi_fidelity", fig)
    print(f"wrote {RESULTS.relative_to(ROOT)}/multi_fidelity.json|csv and {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
