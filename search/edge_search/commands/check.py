"""`edge-search check budgets.yaml`: fail a CI job when a model exceeds its latency/size/accuracy budget.

Exit codes: 0 every budget within (warnings, i.e. too close to call on this runner, do not fail);
1 a budget exceeded; 2 bad input (malformed budgets file, missing model, unknown device), one
line on stderr. Reports: ``--junit`` (JUnit XML), ``--summary`` (markdown, appended, as GitHub's
``$GITHUB_STEP_SUMMARY`` expects), ``--json`` (github-action-benchmark customSmallerIsBetter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument("budgets", type=Path, help="budgets YAML file (see examples/ci/budgets.yaml)")
    parser.add_argument("--device", default=None,
                        help="device profile (default: the budgets file's 'device', else host)")
    parser.add_argument("--profiles", type=Path, action="append", default=[], metavar="DIR",
                        help="extra device profile folder or file (repeatable)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--baseline", type=Path, default=None, metavar="FILE",
                      help="stored baseline (from --save-baseline) for relative budgets")
    base.add_argument("--baseline-model", type=Path, default=None, metavar="MODEL",
                      help="baseline model (ONNX file or bundle folder) measured interleaved with each model")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                        help="concrete shape of an input with dynamic dimensions, for every model with that "
                             "input (repeatable; over the budgets file's shapes and a bundle's own)")
    parser.add_argument("--save-baseline", type=Path, default=None, metavar="FILE",
                        help="write this run's measurements as a baseline file")
    parser.add_argument("--junit", type=Path, default=None, metavar="FILE", help="write JUnit XML")
    parser.add_argument("--summary", type=Path, default=None, metavar="FILE",
                        help="append a markdown summary (e.g. \"$GITHUB_STEP_SUMMARY\")")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write github-action-benchmark JSON (customSmallerIsBetter)")
    parser.add_argument("--min-rounds", type=int, default=None, metavar="N",
                        help="override measurement.min_rounds")
    parser.add_argument("--max-rounds", type=int, default=None, metavar="N",
                        help="override measurement.max_rounds")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Load the budgets, check every model on the device, write the reports, return the exit code."""
    from pydantic import ValidationError

    from edge_search.check.baseline import load_baseline
    from edge_search.check.budgets import load_budgets
    from edge_search.check.reports import benchmark_json, junit_xml, markdown_summary, text_report
    from edge_search.check.runner import run_check, save_baseline
    from edge_search.devices import create_device
    from edge_search.devices.base import Device
    from edge_search.devices.inputs import parse_shape_arg
    from edge_search.devices.profile import get_profile
    from edge_search.errors import InputError
    from edge_search.schema import validation_problem

    shapes = dict(parse_shape_arg(text) for text in args.shape)
    spec = load_budgets(args.budgets)
    if args.min_rounds is not None or args.max_rounds is not None:
        update = {k: v for k, v in (("min_rounds", args.min_rounds), ("max_rounds", args.max_rounds))
                  if v is not None}
        try:
            measurement = spec.measurement.model_validate({**spec.measurement.model_dump(), **update})
        except ValidationError as err:
            raise InputError(f"--min-rounds/--max-rounds: {validation_problem(err).message}") from None
        spec = spec.model_copy(update={"measurement": measurement})
    device_name = args.device or spec.device
    profile = get_profile(device_name, args.profiles)
    if args.baseline_model is not None and not args.baseline_model.exists():
        raise InputError(f"{args.baseline_model}: no such baseline model")
    baseline = load_baseline(args.baseline) if args.baseline is not None else None

    def factory() -> Device:
        if profile.latency.method == "local":
            # One worker per round: check's statistics take its rounds as the unit (check/statistics.py).
            return create_device(profile, warmup_max_s=0.5, min_measure_s=0.3, processes=1, max_retries=1)
        if profile.latency.method == "emulated":
            return create_device(profile, profile_dirs=tuple(args.profiles))
        return create_device(profile)

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"edge-search check: {msg}", file=sys.stderr, flush=True)

    result = run_check(spec, factory, device_name=profile.name, baseline=baseline,
                       baseline_origin=str(args.baseline or ""), baseline_model=args.baseline_model,
                       progress=progress, shapes=shapes)
    if args.junit is not None:
        _write(args.junit, junit_xml(result))
    if args.json is not None:
        _write(args.json, benchmark_json(result))
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        with args.summary.open("a") as fh:
            fh.write(markdown_summary(result))
    if args.save_baseline is not None:
        save_baseline(result, args.save_baseline)
    print(text_report(result))
    return result.exit_code


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
