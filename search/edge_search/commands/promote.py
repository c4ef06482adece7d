"""`edge-search promote`: register a trial's bundle in the MLflow model registry, with an alias."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--trial", type=int, required=True, help="trial number to register")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--alias", default="champion", help="alias pointing at the new version (default champion)")
    p.add_argument("--budget", default=None,
                   help="budget tag, e.g. 'latency_ms <= 5' (default: the study's constraints)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///edge-search.db)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    p.add_argument("--base-dir", type=Path, default=Path(),
                   help="folder the study was run from (cache paths are relative to it; default: here)")


def run(args: argparse.Namespace) -> int:
    from edge_search.bundle.promote import promote_trial
    from edge_search.commands.pareto import load_study
    from edge_search.tracking import Tracker

    study = load_study(args.study, args.storage)
    version = promote_trial(study, args.trial, Tracker(args.tracking_uri), name=args.name, alias=args.alias,
                            budget=args.budget, base_dir=args.base_dir)
    print(f"registered '{args.name}' version {version} (alias '{args.alias}') from trial {args.trial}; "
          f"load it with: models:/{args.name}@{args.alias}")
    return 0
