"""`edge-search export`: write a trial's deployable bundle (or one per front configuration)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number to export")
    which.add_argument("--pareto", action="store_true",
                       help="export every front configuration (for the switching runtime)")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///edge-search.db)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    p.add_argument("--base-dir", type=Path, default=Path(),
                   help="folder the study was run from (cache paths are relative to it; default: here)")


def run(args: argparse.Namespace) -> int:
    from edge_search.bundle.export import export_front, export_trial
    from edge_search.commands.pareto import load_study
    from edge_search.tracking import Tracker

    study = load_study(args.study, args.storage)
    tracker = Tracker(args.tracking_uri)
    if args.pareto:
        from edge_search.bundle.runtime import check_one_input_spec, load_front

        paths = export_front(study, args.output, tracker, args.base_dir)
        print(f"wrote {len(paths)} bundles and front.json to {args.output}")
        try:
            check_one_input_spec(load_front(args.output))
        except ValueError as err:
            print(f"edge-search export: warning: {err}", file=sys.stderr)
    else:
        export_trial(study, args.trial, args.output, tracker, args.base_dir)
        print(f"wrote bundle of trial {args.trial} to {args.output}")
    print(f"run it: python {args.output / 'runtime.py'} {args.output}")
    return 0
