"""`edge-search run`: search training + deployment knobs on a device and log the front to MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_search.drivers import DRIVERS
from edge_search.heartbeat import DEFAULT_GRACE_S, DEFAULT_INTERVAL_S
from edge_search.samplers import SAMPLERS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="host", help="device profile name (see `edge-search devices`)")
    p.add_argument("--space", default=None, help="search space YAML file or built-in name (default: digits-cnn)")
    p.add_argument("--trials", type=int, default=30,
                   help="distinct configurations the study should have evaluated; duplicate proposals and "
                        "failures do not count (default 30)")
    p.add_argument("--study", default=None, help="study name (default: <space>-<device>); an existing one resumes")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///edge-search.db)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="search algorithm (default tpe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    p.add_argument("--cache-dir", type=Path, default=Path(".edge-search/cache"),
                   help="artifact cache: trained models, deployables, measurements")
    p.add_argument("--profiles", type=Path, action="append", default=[],
                   help="extra device profile file or folder (repeatable)")
    p.add_argument("--precision-target", type=float, default=0.02,
                   help="stop measuring when the median's CI is within ± this fraction (default 0.02)")
    p.add_argument("--max-measure-time", type=float, default=5.0, help="time cap per measurement, seconds")
    p.add_argument("--backend", choices=tuple(DRIVERS), default="optuna",
                   help="optuna: embedded, this process (default); ray: Ray Tune over a Ray cluster")
    p.add_argument("--workers", type=int, default=2, help="concurrent trials with --backend ray (default 2)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (auto or HOST:PORT; default: local)")
    p.add_argument("--latency-gate", action="store_true",
                   help="before training, measure the untrained network and skip training when a latency "
                        "constraint is surely missed")
    p.add_argument("--confirm-rounds", type=int, default=6, metavar="N",
                   help="at the end, re-measure the front in N interleaved rounds of fresh workers and "
                        "recompute it from the confirmed figures (default 6; 0: do not)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not start a new study with the configurations a user would try first (ONNX "
                        "Runtime's default session, fp32 per thread count, int8 per format)")
    p.add_argument("--early-stop", action="store_true",
                   help="stop training a trial part-way when finished trials at least as fast are clearly more "
                        "accurate at the same epoch (measures the untrained network first, like --latency-gate)")
    p.add_argument("--heartbeat-interval", type=int, default=DEFAULT_INTERVAL_S, metavar="S",
                   help=f"seconds between a running trial's heartbeats in the storage (default {DEFAULT_INTERVAL_S})")
    p.add_argument("--grace-period", type=int, default=DEFAULT_GRACE_S, metavar="S",
                   help="a trial whose heartbeats stop this long (its process died or froze) is failed and "
                        f"redone with the same parameters by any process sharing the study (default {DEFAULT_GRACE_S})")


def run(args: argparse.Namespace) -> int:
    from edge_search.commands.pareto import print_front
    from edge_search.run import RunOptions, run_search

    summary = run_search(RunOptions(
        device=args.device, space=args.space, trials=args.trials, study=args.study, storage=args.storage,
        sampler=args.sampler, seed=args.seed, tracking_uri=args.tracking_uri, cache_dir=args.cache_dir,
        profiles=args.profiles, precision_target=args.precision_target, max_measure_s=args.max_measure_time,
        backend=args.backend, workers=args.workers, ray_address=args.ray_address, latency_gate=args.latency_gate,
        early_stop=args.early_stop, confirm_rounds=args.confirm_rounds, baselines=not args.no_baselines,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period))
    t = summary.tally
    print(f"study {summary.study}: {summary.complete} distinct configurations evaluated, {len(summary.front)} on "
          f"the Pareto front ({summary.wall_s:.1f} s); failed {t.failures_text()}, {t.duplicates} duplicate "
          f"proposal(s) skipped" + (f", {t.crashed} crashed" if t.crashed else ""))
    total = sum(summary.stage_s.values()) or 1.0
    shares = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in summary.stage_s.items())
    print(f"time in this run: {shares}")
    print(summary.measurements)
    if summary.confirmation:
        print(summary.confirmation)
    print_front(summary.front)
    print(f"next: edge-search pareto --study {summary.study}   |   mlflow ui   (filter: tags.pareto = 'true')")
    return 0
