"""Peer comparison: Microsoft Olive's ONNX Runtime session tuning against edge-search's deployment search.

Same model, same machine: the MobileNetV2-style CNN of ``examples/`` (224x224, batch 1, fp32,
exported by ``examples/run_byom_demo.py``'s `export_models` when missing).

* **Olive** (package ``olive-ai``, in an environment of its own, never an edge-search dependency):
  its `OrtSessionParamsTuning` pass (what ``olive tune-session-params`` runs) on
  ``CPUExecutionProvider`` with 2 cores, through ``olive.workflows.run`` with the workflow the CLI
  builds, except for the dummy input: the CLI hard-codes a (1, 1) input (it targets LLM exports)
  and fails on this CNN ("Invalid rank for input: input Got: 2 Expected: 4"), so the workflow
  here declares the real (1, 3, 224, 224). It tunes intra/inter-op threads, execution mode and
  graph optimisation level for the unchanged fp32 model, so its fidelity is 1.0 by construction.
  It gets a copy of the model with the batch dimension fixed to 1.
* **edge-search**: ``edge-search run --device host`` (through `run_search`) over a deploy-only
  space with the same session knobs plus precision (fp32, int8 dynamic, int8 static), per-channel
  and nodes kept in fp32; TPE, ``--trials`` finished trials, an empty artifact cache; objectives
  fidelity_top1 to the fp32 model (64 inputs) and median latency.

Both tools time latency their own way, so the figures compared are **re-measured back to back with
one method** (edge-search's pinned worker, batch 1, CI of the median within +-2 % or 3 s): the fp32
model in ONNX Runtime's default session (one intra-op thread per core), Olive's chosen session,
edge-search's best fp32 configuration (session knobs only: like for like with Olive), its fastest
configuration with fidelity_top1 >= 0.99, and its fastest configuration overall. Wall time is
each tool's whole run.

    python -m venv --system-site-packages /tmp/olive-venv && /tmp/olive-venv/bin/pip install olive-ai
    python benchmarks/peer_olive.py [--olive-venv /tmp/olive-venv] [--trials 20]

(`--system-site-packages` lets Olive use the CPU torch already installed; without it pip pulls a
multi-GB CUDA torch.) Without the Olive environment the script still runs the edge-search arm
and records why Olive was skipped. Writes benchmarks/results/peer_olive.json and peer_olive.html.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench import RESULTS, ROOT, WORK, host_info, loadavg, write_figure, write_json

FOLDER = WORK / "peer"
MODEL = ROOT / "examples/out/mobilenet_v2.onnx"
SHAPES = {"input": (1, 3, 224, 224)}
SPACE = """\
schema_version: 1
name: peer-mobilenet-v2
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
  execution_mode: {{choices: [sequential, parallel]}}
  intra_op_threads: {{low: 1, high: cores}}
  inter_op_threads: {{low: 1, high: cores, when: {{execution_mode: parallel}}}}
  graph_optimization: {{choices: [basic, extended, all]}}
objectives: [fidelity_top1, latency_ms]
"""
ORT_LEVELS = {0: "disable", 1: "basic", 2: "extended", 99: "all"}


def static_batch_copy(src: Path, dst: Path) -> Path:
    import onnx

    model = onnx.load(str(src))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param:
            dim.ClearField("dim_param")
            dim.dim_value = 1
    onnx.save(model, str(dst))
    return dst


def olive_session(settings: dict[str, Any]) -> dict[str, Any]:
    """Olive's inference settings as edge-search session knobs."""
    so = settings.get("session_options") or {}
    mode = so.get("execution_mode", 0)
    mode = {0: "sequential", 1: "parallel"}.get(mode, str(mode).lower().removeprefix("executionmode.ort_"))
    level = so.get("graph_optimization_level", 99)
    if isinstance(level, str):
        level = {"ORT_DISABLE_ALL": 0, "ORT_ENABLE_BASIC": 1, "ORT_ENABLE_EXTENDED": 2}.get(level.split(".")[-1], 99)
    return {"intra_op_threads": max(1, int(so.get("intra_op_num_threads") or os.cpu_count() or 1)),
            "inter_op_threads": max(1, int(so.get("inter_op_num_threads") or 1)),
            "execution_mode": mode if mode in ("sequential", "parallel") else "sequential",
            "graph_optimization": ORT_LEVELS.get(int(level), "all")}


OLIVE_RUNNER = """\
import json, sys
from olive.workflows import run
config = json.loads(open(sys.argv[1]).read())
out = run(config)
models = out.get_output_models()
json.dump([m.get_inference_config() for m in models], open(sys.argv[2], "w"), indent=1, default=str)
"""


def olive_config(model: Path, out: Path) -> dict[str, Any]:
    """The workflow `olive tune-session-params` builds, with the model's real input shape: the CLI
    hard-codes a (1, 1) dummy input (it targets Hugging Face LLM exports), which fails on a CNN,
    and without a search strategy the pass evaluates only ORT's default session."""
    cores = os.cpu_count() or 1
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(model)},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{"name": "tuning_data", "type": "dummydatacontainer", "load_dataset_config": {
            "type": "dummy_dataset", "input_shapes": [list(SHAPES["input"])], "input_names": ["input"],
            "input_types": ["float32"], "max_samples": 32}}],
        "passes": {"session_params_tuning": {
            "type": "OrtSessionParamsTuning", "data_config": "tuning_data", "cpu_cores": cores,
            # the search space (Olive's defaults search nothing: one ORT-default session)
            "execution_mode_list": _categorical([0, 1]),          # ORT_SEQUENTIAL, ORT_PARALLEL
            "opt_level_list": _categorical([0, 1, 2, 99]),        # disable, basic, extended, all
            "intra_thread_num_list": _categorical(list(range(1, cores + 1))),
            "inter_thread_num_list": _categorical(list(range(1, cores + 1)))}},
        "evaluators": {"latency": {"metrics": [{"name": "latency", "type": "latency", "sub_types": [
            {"name": "avg", "priority": 1}],
            "data_config": "tuning_data"}]}},
        "evaluator": "latency",
        "search_strategy": {"execution_order": "joint", "sampler": "sequential"},
        "host": "local_system", "target": "local_system", "output_dir": str(out), "log_severity_level": 0,
        "evaluate_input_model": False,
    }


def _categorical(values: list[Any]) -> dict[str, Any]:
    return {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": values}


def run_olive(venv: Path) -> dict[str, Any]:
    python = venv / "bin" / "python"
    if not python.exists():
        return {"status": "skipped", "reason": f"{python} not found: create the environment as the docstring says"}
    version = subprocess.run([str(python), "-c", "import olive; print(olive.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    if not version:
        return {"status": "skipped", "reason": f"olive-ai is not importable with {python}"}
    model = static_batch_copy(MODEL, FOLDER / "mobilenet_v2_b1.onnx")
    out = FOLDER / "olive-out"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(FOLDER / ".olive-cache", ignore_errors=True)  # Olive caches runs: a rerun would tune nothing
    (FOLDER / "olive_runner.py").write_text(OLIVE_RUNNER)
    (FOLDER / "olive_config.json").write_text(json.dumps(olive_config(model, out), indent=1))
    result_file = FOLDER / "olive_result.json"
    result_file.unlink(missing_ok=True)
    cmd = [str(python), str(FOLDER / "olive_runner.py"), str(FOLDER / "olive_config.json"), str(result_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OLIVE_DISABLE_TELEMETRY": "1"}
    load0 = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=FOLDER, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    log = proc.stdout + "\n--- stderr ---\n" + proc.stderr
    (FOLDER / "olive.log").write_text(log)
    res: dict[str, Any] = {"version": version, "pass": "OrtSessionParamsTuning (olive.workflows.run)",
                           "wall_s": wall, "returncode": proc.returncode, "loadavg_start": load0,
                           "loadavg_end": loadavg(), "log": str(FOLDER / "olive.log"),
                           "configs_tried": log.count("Running tuning with params"),
                           "olive_latency_lines": [ln.strip() for ln in log.splitlines()
                                                   if "Tuning result with params" in ln or "Best result" in ln][-20:]}
    own = [float(ln.rsplit("=", 1)[1]) for ln in log.splitlines() if "Tuning result with params" in ln]
    res["olive_own_best_avg_ms"] = min(own) if own else None
    """Olive's own figure: mean latency of its best session over its 32-sample dummy loader."""
    failed = [ln for ln in log.splitlines() if "evaluation failed" in ln.lower() or "Error" in ln]
    settings = json.loads(result_file.read_text()) if result_file.exists() else []
    settings = [s for s in settings if s and s.get("session_options")]
    if proc.returncode != 0 or not settings:
        res.update(status="failed", reason=(failed or log.strip().splitlines() or ["no output"])[-1][:500])
        return res
    res.update(status="ok", settings=settings[0], session=olive_session(settings[0]))
    return res


def run_edge_search(trials: int, seed: int) -> dict[str, Any]:
    import optuna

    from edge_search.run import RunOptions, run_search

    folder = FOLDER / "edge-search"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    space = folder / "space.yaml"
    space.write_text(SPACE.format(root=ROOT))
    opts = RunOptions(device="host", space=str(space), trials=trials, seed=seed, sampler="tpe",
                      storage=f"sqlite:///{folder}/edge-search.db", tracking_uri=f"sqlite:///{folder}/mlflow.db",
                      cache_dir=folder / "cache", max_measure_s=1.0, precision_target=0.03)
    load0 = loadavg()
    t0 = time.perf_counter()
    summary = run_search(opts, progress_stream=open(os.devnull, "w"))  # noqa: SIM115
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=summary.study, storage=opts.storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    def best(pred: Any) -> dict[str, Any] | None:
        pool = [t for t in done if pred(t)]
        if not pool:
            return None
        t = min(pool, key=lambda t: t.values[1])
        cfg = t.user_attrs["config_params"]
        deploy = {k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith("deploy.")}
        return {"trial": t.number, "fidelity_top1": t.values[0], "latency_ms_in_search": t.values[1],
                "deploy": deploy, "model": t.user_attrs["deployable_path"]}

    return {"wall_s": wall, "trials": summary.complete, "asked": len(study.trials), "stage_s": summary.stage_s,
            "loadavg_start": load0, "loadavg_end": loadavg(),
            "best_fp32": best(lambda t: t.user_attrs["config_params"].get("deploy.precision") == "fp32"),
            "best_fidelity_99": best(lambda t: t.values[0] >= 0.99),
            "best_any": best(lambda t: True)}


def remeasure(model: Path, session: dict[str, Any]) -> dict[str, Any]:
    from edge_search.devices.base import MeasureRequest, SessionKnobs
    from edge_search.devices.local import LocalDevice
    from edge_search.devices.profile import get_profile

    keys = ("intra_op_threads", "inter_op_threads", "graph_optimization", "execution_mode")
    knobs = SessionKnobs(**{k: session[k] for k in keys if k in session})
    stats = LocalDevice(get_profile("host")).measure(MeasureRequest(
        model_path=model, session=knobs, shapes=SHAPES, precision_target=0.02, max_time_s=3.0))
    return {"median_ms": stats.median_ms, "ci_low_ms": stats.ci_low_ms, "ci_high_ms": stats.ci_high_ms,
            "cv": stats.cv, "samples": len(stats.samples_ms), "session": knobs.model_dump()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--olive-venv", type=Path, default=Path("/tmp/olive-venv"))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    info = host_info()
    print(f"host: {info}")
    if not MODEL.exists():
        from examples.run_byom_demo import export_models

        export_models()
    FOLDER.mkdir(parents=True, exist_ok=True)
    print(f"olive: tune-session-params (load {loadavg()})", flush=True)
    olive = run_olive(args.olive_venv)
    print(f"  {olive.get('status')}: wall {olive.get('wall_s', 0):.0f} s, {olive.get('configs_tried')} sessions tried, "
          f"Olive's own best mean {olive.get('olive_own_best_avg_ms')} ms; "
          + (f"session {olive['session']}" if olive.get("status") == "ok" else f"reason {olive.get('reason')}"),
          flush=True)
    print(f"edge-search: run --trials {args.trials} (load {loadavg()})", flush=True)
    es = run_edge_search(args.trials, args.seed)
    print(f"  wall {es['wall_s']:.0f} s, {es['trials']} finished of {es['asked']} asked; stages "
          + ", ".join(f"{k} {v:.0f} s" for k, v in es["stage_s"].items()), flush=True)
    print(f"re-measuring back to back (load {loadavg()})", flush=True)
    arms: dict[str, tuple[Path, dict[str, Any], float]] = {
        "ort-default fp32": (MODEL, {"intra_op_threads": os.cpu_count() or 1}, 1.0)}
    if olive.get("status") == "ok":
        arms["olive tuned fp32"] = (MODEL, olive["session"], 1.0)
    for key, label in (("best_fp32", "edge-search fp32"), ("best_fidelity_99", "edge-search fidelity>=0.99"),
                       ("best_any", "edge-search fastest")):
        b = es.get(key)
        if b:
            arms[label] = (Path(b["model"]), b["deploy"], float(b["fidelity_top1"]))
    table: dict[str, Any] = {}
    for label, (model, session, fidelity) in arms.items():
        m = remeasure(model, session)
        table[label] = {"fidelity_top1": fidelity, **m}
        print(f"  {label:28s} median {m['median_ms']:.3f} ms [{m['ci_low_ms']:.3f}, {m['ci_high_ms']:.3f}] "
              f"fidelity {fidelity:.4f}  session {m['session']}", flush=True)
    results = {"host": info, "model": str(MODEL.relative_to(ROOT)), "olive": olive, "edge_search": es,
               "remeasured": table, "loadavg_end": loadavg()}
    write_json("peer_olive", results)
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=list(table), y=[v["median_ms"] for v in table.values()],
                           error_y={"type": "data", "symmetric": False,
                                    "array": [v["ci_high_ms"] - v["median_ms"] for v in table.values()],
                                    "arrayminus": [v["median_ms"] - v["ci_low_ms"] for v in table.values()]},
                           text=[f"fidelity {v['fidelity_top1']:.3f}" for v in table.values()]))
    walls = f"wall: Olive {olive.get('wall_s', float('nan')):.0f} s, edge-search {es['wall_s']:.0f} s"
    fig.update_layout(title=f"MobileNetV2-style, batch 1, re-measured back to back ({walls})",
                      yaxis_title="median latency (ms)")
    path = write_figure("peer_olive", fig)
    print(f"wrote {RESULTS.relative_to(ROOT)}/peer_olive.json and {path.relative_to(ROOT)}; load {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
