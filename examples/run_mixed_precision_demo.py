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
                      cache_dir=OUT / "cache", max_measure_s=measure_s, precision_target=0.02)
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
                         precision_target=0.02, max_time_s=measure_s)
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


def _k(t: Any) -> str:
    """keep_fp32_top_k of a trial ('-' for fp32)."""
    c = t.user_attrs["config_params"]
    return "-" if c["deploy.precision"] == "fp32" else str(c.get("deploy.keep_fp32_top_k", 0))


def report(study_name: str, space: str, measure_s: float, rounds: int = 3) -> None:
    """Print the front, every distinct configuration, then best latency at >= 99 % and >= 95 %
    fidelity vs fp32 and all-int8, re-measured in `rounds` interleaved rounds (median of medians)."""
    import optuna
    from optuna.trial import TrialState

    from edge_search.pareto import pareto_points
    from edge_search.transforms.quantize.ort import fp32_nodes_of

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{OUT}/edge-search.db")
    done = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    head = (f"{'trial':>5}  {'precision':<11} {'k':>3} {'fp32 nodes':>10}  {'fidelity_top1':>13}  {'cosine':>8}  "
            f"{'latency_ms':>10}")

    def row(t: Any) -> str:
        m, c = t.user_attrs["metrics"], t.user_attrs["config_params"]
        nodes = len(fp32_nodes_of(Path(t.user_attrs["deployable_path"])) or [])
        return (f"{t.number:>5}  {c['deploy.precision']:<11} {_k(t):>3} {nodes if _k(t) != '-' else '-':>10}  "
                f"{m['fidelity_top1']:>13.4f}  {m['fidelity_cosine']:>8.5f}  {m['latency_ms']:>10.3f}")

    front = {p.trial for p in pareto_points(study)}
    first = {}
    for t in done.values():
        first.setdefault(_k(t), t)  # one row per distinct configuration (repeats are cache hits)
    print(f"\n== {study_name}: every distinct configuration (first trial of each; * = on the front) ==")
    print(head)
    for t in sorted(first.values(), key=lambda t: t.user_attrs["metrics"]["latency_ms"]):
        print(row(t) + ("  *" if t.number in front else ""))
    base = _baselines(space)
    shapes = {"input": (1, 3, 224, 224)}
    rows: list[tuple[str, float, Path, str]] = [(label, fid, path, "") for label, (fid, path, _) in base.items()]
    for floor in (0.99, 0.95):
        ok = [t for t in done.values() if t.user_attrs["metrics"]["fidelity_top1"] >= floor]
        if not ok:
            print(f"no trial reached fidelity_top1 >= {floor}")
            continue
        best = min(ok, key=lambda t: t.user_attrs["metrics"]["latency_ms"])
        rows.append((f"best >= {floor:.0%}", best.user_attrs["metrics"]["fidelity_top1"],
                     Path(best.user_attrs["deployable_path"]),
                     f"trial #{best.number} {best.user_attrs['config_params']['deploy.precision']} k={_k(best)}, "
                     f"{best.user_attrs['metrics']['latency_ms']:.3f} ms in the search"))
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(rounds):  # interleaved, so a load spike hits every configuration alike
        for i, (_, _, path, _) in enumerate(rows):
            times[i].append(_measure(path, shapes, measure_s))
    print(f"\n== {study_name}: re-measured in {rounds} interleaved rounds (1 thread, batch 1, "
          "median of the rounds' medians) ==")
    fp32_ms = float(np.median(times[0]))
    for (label, fid, _, note), ts in zip(rows, times, strict=True):
        ms = float(np.median(ts))
        print(f"{label:<12} fidelity_top1 {fid:.4f}  {ms:8.3f} ms  ({fp32_ms / ms:.2f}x vs fp32; rounds "
              f"{', '.join(f'{x:.2f}' for x in ts)})  {note}")


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
