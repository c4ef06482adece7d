"""`edge-search confirm`: re-measure a study's front interleaved in fresh workers and recompute it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///edge-search.db)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db)")
    p.add_argument("--rounds", type=int, default=6,
                   help="interleaved rounds (A B C, C B A, ...), each one fresh worker process (default 6)")
    p.add_argument("--profiles", type=Path, action="append", default=[],
                   help="extra device profile file or folder (repeatable)")
    p.add_argument("--json", action="store_true", help="print the confirmed front as JSON (as pareto --json)")


def run(args: argparse.Namespace) -> int:
    from edge_search.commands.pareto import load_study, print_front
    from edge_search.confirm import confirm_front
    from edge_search.devices import create_device
    from edge_search.devices.profile import get_profile
    from edge_search.errors import InputError
    from edge_search.pareto import pareto_points
    from edge_search.records import StudyRecord
    from edge_search.space import SearchSpace
    from edge_search.study import StudySession, make_storage
    from edge_search.tracking import Tracker

    if args.rounds < 2:
        raise InputError("--rounds must be at least 2 (the rounds are the unit of the interval)")
    study = load_study(args.study, args.storage)
    record = StudyRecord.of(study)
    if not record.space or not record.device:
        raise InputError(f"study '{args.study}' was not made by edge-search run (no space or device recorded)")
    profile = get_profile(record.device, args.profiles)

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with create_device(profile) as device:
        done = confirm_front(study, device, rounds=args.rounds, note=note)
    session = StudySession.attach(space=SearchSpace.model_validate(record.space), device=record.device,
                                  study_name=args.study, storage=make_storage(args.storage),
                                  tracker=Tracker(args.tracking_uri))
    if session.parent_run_id:
        session.record_confirmation()
        try:
            from edge_search.dashboards.tracking import log_study_dashboards

            log_study_dashboards(session.study, session.tracker, session.parent_run_id)
        except Exception as err:  # the confirmation is on the study; MLflow is a view of it
            note(f"could not log the dashboards to MLflow: {err}")
    for number, why in done.skipped.items():
        note(f"trial {number} not confirmed: {why}")
    points = pareto_points(load_study(args.study, args.storage))
    if args.json:
        print(json.dumps([p.to_json() for p in points], indent=2))
    else:
        print(f"confirmed {len(done.trials)} configuration(s) in {done.rounds} interleaved rounds"
              + (f" (+{done.extra_rounds} measured again)" if done.extra_rounds else "")
              + f" in {done.wall_s:.1f} s; {len(points)} on the confirmed front")
        print_front(points)
    return 0
