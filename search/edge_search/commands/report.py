"""`edge-search report`: one self-contained HTML file with a study's figures and its front as a table."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                   help="HTML file to write (default report.html); plotly.js is embedded, it opens offline")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///edge-search.db)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI holding the raw latency samples (default: sqlite:///mlflow.db); "
                        "without it the latency plot shows each configuration's summary")


def run(args: argparse.Namespace) -> int:
    from edge_search.commands.pareto import load_study
    from edge_search.dashboards.data import SamplesLoader, study_data, tracked_samples_loader
    from edge_search.dashboards.report import write_report
    from edge_search.errors import InputError
    from edge_search.tracking import Tracker

    study = load_study(args.study, args.storage)
    samples: SamplesLoader | None = None
    try:
        samples = tracked_samples_loader(Tracker(args.tracking_uri))
    except Exception:  # no MLflow store here: the report still draws everything else
        samples = None
    data = study_data(study, samples=samples)
    if not data.trials:
        raise InputError(f"study '{args.study}' has no complete trial to report")
    path = write_report(data, args.output)
    print(f"wrote {path} ({len(data.trials)} trials, {len(data.front)} on the front)")
    return 0
