"""Bring-your-own-model demo: export two models to ONNX, search their deployment on `host`.

    python examples/run_byom_demo.py [--trials 14] [--max-measure-time 2]

1. Exports a MobileNetV2-style CNN at 224x224 (examples/mobilenet_v2.py: random weights, BatchNorm
   re-estimated) and a small transformer encoder (examples/transformer_encoder.py) to
   examples/out/*.onnx, each with an .npz of 96 inputs (no labels: fidelity to fp32 is the metric).
   Random weights make these latency workloads, not quality references: for int8 and mixed-precision
   quality use examples/pretrained_efficientnet_lite.py (pretrained weights, real photos).
2. Runs the equivalent of `edge-search run --device host --space ...` on examples/mobilenet_v2_onnx.yaml and
   examples/transformer_onnx.yaml (stores under examples/out/).
3. Prints each front and the measured speed-up of the fastest batch-1 configuration with
   fidelity_top1 >= 0.99 over the fp32 model in a default session: the best deployable and the
   baselines are re-measured back to back (same method), the baseline once with edge-search's
   default (1 intra-op thread) and once with ONNX Runtime's default thread count (one per core).

Run from anywhere; it works in the repository root. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "out"
N_SAMPLES = 96


def export_models() -> None:
    """Write mobilenet_v2.onnx/.npz and transformer.onnx/.npz under examples/out (skip if present)."""
    from edge_search.tasks.torch_task import export_onnx
    from examples import mobilenet_v2, transformer_encoder

    OUT.mkdir(parents=True, exist_ok=True)
    jobs = [("mobilenet_v2", mobilenet_v2.build, {**mobilenet_v2.TRAIN_KNOBS, "eval_samples": N_SAMPLES}),
            ("transformer", transformer_encoder.build, {**transformer_encoder.TRAIN_KNOBS,
                                                        "eval_samples": N_SAMPLES})]
    for name, build, params in jobs:
        if (OUT / f"{name}.onnx").exists() and (OUT / f"{name}.npz").exists():
            continue
        import torch

        torch.manual_seed(0)
        module, data = build(params)
        export_onnx(module, data, OUT / f"{name}.onnx", opset=17, dynamic_spatial=False)
        np.savez(OUT / f"{name}.npz", **data)  # type: ignore[arg-type]
        print(f"exported {name}: {(OUT / f'{name}.onnx').stat().st_size / 1e6:.1f} MB, "
              f"inputs {({k: v.shape for k, v in data.items()})}")


def run_study(space: str, trials: int, measure_s: float) -> str:
    """`edge-search run --device host` on `space` (through its function); returns the study name."""
    from edge_search.run import RunOptions, run_search

    opts = RunOptions(device="host", space=space, trials=trials, seed=0,
                      storage=f"sqlite:///{OUT}/edge-search.db", tracking_uri=f"sqlite:///{OUT}/mlflow.db",
                      cache_dir=OUT / "cache", max_measure_s=measure_s, precision_target=0.03)
    summary = run_search(opts, sys.stderr)
    print(f"study {summary.study}: {summary.complete} finished trials in {summary.wall_s:.0f} s "
          f"(stages: {', '.join(f'{k} {v:.0f} s' for k, v in summary.stage_s.items())})")
    return summary.study


def baseline_ms(model: Path, shapes: dict[str, tuple[int, ...]], threads: int, measure_s: float,
                session: dict[str, object] | None = None) -> float:
    """Median latency of `model` in a default session with `threads` intra-op threads, or in the
    trial's own `session` knobs when given."""
    from edge_search.devices.base import MeasureRequest, SessionKnobs
    from edge_search.devices.local import LocalDevice
    from edge_search.devices.profile import get_profile

    device = LocalDevice(get_profile("host"))
    knobs = SessionKnobs(**session) if session else SessionKnobs(intra_op_threads=threads)  # type: ignore[arg-type]
    req = MeasureRequest(model_path=model, session=knobs, shapes=shapes,
                         precision_target=0.03, max_time_s=measure_s)
    return device.measure(req).median_ms


def report(study_name: str, model: Path, measure_s: float) -> None:
    """Print the front and the speed-up of the best batch-1 trial within 1 % fidelity."""
    import optuna
    from optuna.trial import TrialState

    from edge_search.pareto import pareto_points

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{OUT}/edge-search.db")
    print(f"\n== {study_name}: front ==")
    print(f"{'trial':>5}  {'fidelity_top1':>13}  {'cosine':>8}  {'latency_ms':>10}  {'items/s':>8}  config")
    done = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    for p in sorted(pareto_points(study), key=lambda p: p.values["latency_ms"]):
        m = done[p.trial].user_attrs["metrics"]
        knobs = {k.removeprefix("deploy."): v for k, v in p.params.items()
                 if k in ("deploy.precision", "deploy.batch_size", "deploy.intra_op_threads",
                          "deploy.per_channel", "deploy.quant_format", "deploy.keep_fp32",
                          "deploy.weight_only_block_size", "deploy.quantize_op_types")}
        print(f"{p.trial:>5}  {m['fidelity_top1']:>13.4f}  {m['fidelity_cosine']:>8.5f}  "
              f"{m['latency_ms']:>10.3f}  {m['throughput_per_s']:>8.1f}  {knobs}")
    ok = [t for t in done.values() if t.user_attrs["metrics"]["fidelity_top1"] >= 0.99
          and t.user_attrs["config_params"]["deploy.batch_size"] == 1]
    if not ok:
        print("no batch-1 trial within 1 % fidelity")
        return
    best = min(ok, key=lambda t: t.user_attrs["metrics"]["latency_ms"])
    bm = best.user_attrs["metrics"]
    from edge_search.devices.inputs import specs_from_onnx

    data = np.load(str(model.with_suffix(".npz")))
    shapes = {s.name: (1, *data[s.name].shape[1:]) for s in specs_from_onnx(model)}
    params = {k.removeprefix("deploy."): v for k, v in best.user_attrs["config_params"].items()
              if k.startswith("deploy.")}
    # Re-measure the best deployable back to back with the baselines, so all three figures share
    # the machine's conditions (a search's measurements are minutes apart).
    session = {k: params[k] for k in ("intra_op_threads", "inter_op_threads", "graph_optimization",
                                      "execution_mode")}
    best_now = baseline_ms(Path(best.user_attrs["deployable_path"]), shapes, int(params["intra_op_threads"]),
                           measure_s, session)
    base1 = baseline_ms(model, shapes, 1, measure_s)
    base_ort = baseline_ms(model, shapes, os.cpu_count() or 1, measure_s)
    print(f"best batch-1 trial with fidelity_top1 >= 0.99: #{best.number} precision={params['precision']} "
          f"threads={params['intra_op_threads']} (fidelity_top1 {bm['fidelity_top1']:.4f}, cosine "
          f"{bm['fidelity_cosine']:.5f}): {bm['latency_ms']:.3f} ms in the search, "
          f"{best_now:.3f} ms re-measured")
    print(f"fp32 default session, 1 thread (edge-search default): {base1:.3f} ms -> speed-up "
          f"{base1 / best_now:.2f}x")
    print(f"fp32 default session, {os.cpu_count()} threads (ONNX Runtime default): {base_ort:.3f} ms -> "
          f"speed-up {base_ort / best_now:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=14, help="finished trials per model (default 14)")
    parser.add_argument("--max-measure-time", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    export_models()
    for space, model in (("examples/mobilenet_v2_onnx.yaml", OUT / "mobilenet_v2.onnx"),
                         ("examples/transformer_onnx.yaml", OUT / "transformer.onnx")):
        study = run_study(space, args.trials, args.max_measure_time)
        report(study, model, args.max_measure_time)


if __name__ == "__main__":
    main()
