"""Mixed-precision demo: search int8 with the k most sensitive nodes kept fp32, on two CNNs.

    python examples/run_mixed_precision_demo.py [--trials 16] [--max-measure-time 2] [--only NAME]

1. Exports a MobileNetV2-style CNN (examples/mobilenet_v2.py) and an EfficientNet-Lite0-style CNN
   (examples/efficientnet_lite.py) at 224x224 to examples/out/mp_*.onnx with an .npz of 96
   synthetic images (the first 64 are scored, the last 32 calibrate). Weights are random
   (seeded; BatchNorm re-estimated), 1000 classes: near-tied logits make top-1 agreement a harsh
   test for int8, which is where mixed precision has work to do. Nothing is downloaded.
2. Runs the equivalent of `edge-search run --device host --space examples/mixed_precision_<net>.yaml`
   (precision fp32 / int8-static, `keep_fp32_top_k` searched; the sensitivity ranking is computed
   once per network and cached under examples/out/cache/sensitivity/).
3. Prints each front and, per network, the best search latency at fidelity_top1 >= 0.99 and
   >= 0.95 against the fp32 model and the all-int8 model (same settings, k = 0), all four
   re-measured back to back with the same method, so they share the machine's conditions.

Run from anywhere; it works in the repository root.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "out"
N_SAMPLES = 96
CLASSES = 1000
NETWORKS = ("mobilenet_v2", "efficientnet_lite")


def export_network(name: str) -> Path:
    """Write examples/out/mp_<name>.onnx and .npz (skipped when both exist); returns the model path."""
    model_path = OUT / f"mp_{name}.onnx"
    if model_path.exists() and model_path.with_suffix(".npz").exists():
        return model_path
    import torch

    from edge_search.tasks.torch_task import export_onnx
    from examples import efficientnet_lite, mobilenet_v2

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        module: Any = mobilenet_v2.MobileNetV2(1.0, CLASSES)
    else:
        module = efficientnet_lite.EfficientNetLite(CLASSES)
    efficientnet_lite.recalibrate_bn(module, mobilenet_v2.synthetic_images(32, 224, CLASSES, seed=0)[0])
    images, _ = mobilenet_v2.synthetic_images(N_SAMPLES, 224, CLASSES, seed=1)
    OUT.mkdir(parents=True, exist_ok=True)
    export_onnx(module, {"input": images}, model_path, opset=17, dynamic_spatial=False)
    np.savez(model_path.with_suffix(".npz"), input=images)
    print(f"exported {name}: {model_path.stat().st_size / 1e6:.1f} MB, {CLASSES} classes, random weights")
    return model_path


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


def _measure(model: Path, shapes: dict[str, tuple[int, ...]], measure_s: float) -> float:
    """Median latency (1 intra-op thread, default session) with edge-search's measurement method."""
    from edge_search.devices.base import MeasureRequest, SessionKnobs
    from edge_search.devices.local import LocalDevice
    from edge_search.devices.profile import get_profile

    req = MeasureRequest(model_path=model, session=SessionKnobs(intra_op_threads=1), shapes=shapes,
                         precision_target=0.03, max_time_s=measure_s)
    return LocalDevice(get_profile("host")).measure(req).median_ms


def _baselines(space: str) -> dict[str, tuple[float, Path, dict[str, Any]]]:
    """fp32 and all-int8 (the space's fixed int8 settings, k = 0) through the trial pipeline (cached)."""
    from edge_search.cache import ArtifactCache
    from edge_search.config import DeployConfig, TrialConfig
    from edge_search.devices.local import LocalDevice
    from edge_search.devices.profile import get_profile
    from edge_search.pipeline import Pipeline
    from edge_search.space import load_space
    from edge_search.tasks import create_task

    sp = load_space(space)
    task = create_task(sp.task.name, sp.task.options)
    profile = get_profile("host")
    pipe = Pipeline(task, LocalDevice(profile), profile, ArtifactCache(OUT / "cache"), max_measure_s=1.0)
    fixed = {k: v.value for k, v in sp.deploy.items() if v.type == "fixed"}
    out = {}
    for label, precision in (("fp32", "fp32"), ("all-int8", "int8-static")):
        knobs = {**fixed, "precision": precision, "keep_fp32_top_k": 0}
        if precision == "fp32":
            knobs = {k: v for k, v in knobs.items() if k in ("intra_op_threads", "batch_size", "precision")}
        res = pipe.evaluate(TrialConfig(train={}, deploy=DeployConfig(**knobs)))
        out[label] = (res.metrics["fidelity_top1"], res.deployable, res.metrics)
    return out


def report(study_name: str, space: str, measure_s: float) -> None:
    """Print the front, then best latency at >= 99 % and >= 95 % fidelity vs fp32 and all-int8."""
    import optuna
    from optuna.trial import TrialState

    from edge_search.pareto import pareto_points
    from edge_search.sensitivity import fp32_nodes_of

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{OUT}/edge-search.db")
    done = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    print(f"\n== {study_name}: front ==")
    print(f"{'trial':>5}  {'precision':<11} {'k fp32':>6}  {'fidelity_top1':>13}  {'cosine':>8}  {'latency_ms':>10}")
    for p in sorted(pareto_points(study), key=lambda p: p.values["latency_ms"]):
        t = done[p.trial]
        m, c = t.user_attrs["metrics"], t.user_attrs["config_params"]
        k = len(fp32_nodes_of(Path(t.user_attrs["deployable_path"])) or []) if c["deploy.precision"] != "fp32" else "-"
        print(f"{p.trial:>5}  {c['deploy.precision']:<11} {k!s:>6}  {m['fidelity_top1']:>13.4f}  "
              f"{m['fidelity_cosine']:>8.5f}  {m['latency_ms']:>10.3f}")
    base = _baselines(space)
    shapes = {"input": (1, 3, 224, 224)}
    rows: list[tuple[str, float, Path, str]] = [(label, fid, path, "") for label, (fid, path, _) in base.items()]
    for floor in (0.99, 0.95):
        ok = [t for t in done.values() if t.user_attrs["metrics"]["fidelity_top1"] >= floor]
        if not ok:
            print(f"no trial reached fidelity_top1 >= {floor}")
            continue
        best = min(ok, key=lambda t: t.user_attrs["metrics"]["latency_ms"])
        c = best.user_attrs["config_params"]
        path = Path(best.user_attrs["deployable_path"])
        k = len(fp32_nodes_of(path) or []) if c["deploy.precision"] != "fp32" else 0
        rows.append((f"best >= {floor:.0%}", best.user_attrs["metrics"]["fidelity_top1"], path,
                     f"trial #{best.number} {c['deploy.precision']}, {k} nodes fp32, "
                     f"{best.user_attrs['metrics']['latency_ms']:.3f} ms in the search"))
    print(f"\n== {study_name}: re-measured back to back (1 thread, batch 1, median) ==")
    fp32_ms = None
    for label, fid, path, note in rows:
        ms = _measure(path, shapes, measure_s)
        fp32_ms = fp32_ms or ms
        print(f"{label:<12} fidelity_top1 {fid:.4f}  {ms:8.3f} ms  ({fp32_ms / ms:.2f}x vs fp32)  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="finished trials per network (default 16)")
    parser.add_argument("--max-measure-time", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--only", choices=NETWORKS, help="one network only")
    args = parser.parse_args()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    for name in [args.only] if args.only else NETWORKS:
        export_network(name)
        space = f"examples/mixed_precision_{name}.yaml"
        study = run_study(space, args.trials, args.max_measure_time)
        report(study, space, args.max_measure_time)


if __name__ == "__main__":
    main()
