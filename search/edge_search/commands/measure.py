"""`edge-search measure MODEL`: measure one ONNX model's (or exported bundle's) latency on a device.

A bundle folder (from `edge-search export`) is measured with the session knobs and input shapes
its `bundle.json` records; ``--threads`` etc. and ``--shape`` override them.

Prints the median, percentiles, mean, stdev, CV, the CI of the median, warm-up and sample counts,
session load and first-run time, peak memory, host metadata and any warning; ``--json`` prints the
`LatencyStats` JSON instead. Bad input (missing or corrupt model, a dynamic dimension without
``--shape``, more threads than the device allows) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_search.devices.stats import LatencyStats


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    parser.add_argument("model", type=Path, help="ONNX model file, or a bundle folder from `edge-search export`")
    parser.add_argument("--device", default="host", help="device profile name (default: host)")
    parser.add_argument("--profiles", type=Path, action="append", default=[], metavar="DIR",
                        help="extra device profile folder or file (repeatable)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads (default: the bundle's, else 1)")
    parser.add_argument("--inter-threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime inter-op threads (default: the bundle's, else 1)")
    parser.add_argument("--graph-opt", choices=["disable", "basic", "extended", "all"], default=None,
                        help="graph optimisation level (default: the bundle's, else all)")
    parser.add_argument("--execution-mode", choices=["sequential", "parallel"], default=None,
                        help="ONNX Runtime execution mode (default: the bundle's, else sequential)")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2,...",
                        help="concrete shape of an input with dynamic dimensions (repeatable; a bundle "
                             "records its own)")
    parser.add_argument("--precision-target", type=float, default=0.02, metavar="FRACTION",
                        help="stop when the 95%% CI of the median is within ± this fraction (default: 0.02)")
    parser.add_argument("--max-time", type=float, default=10.0, metavar="SECONDS",
                        help="time cap of the repetition phase, warm-up excluded (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input data (default: 0)")
    parser.add_argument("--processes", type=int, default=2, metavar="N",
                        help="fresh worker processes per measurement, the unit of its interval (default: 2)")
    parser.add_argument("--json", action="store_true", help="print the LatencyStats JSON")


def run(args: argparse.Namespace) -> int:
    """Build the request, measure it on the device and print the result."""
    from pydantic import ValidationError

    from edge_search.bundle.resolve import resolve_model
    from edge_search.devices import create_device
    from edge_search.devices.base import MeasureRequest, SessionKnobs
    from edge_search.devices.inputs import parse_shape_arg
    from edge_search.devices.profile import get_profile
    from edge_search.errors import InputError
    from edge_search.schema import validation_problem

    if args.processes < 1:
        raise InputError("--processes must be at least 1")
    if (args.threads is not None and args.threads < 1) or (args.inter_threads is not None and args.inter_threads < 1):
        raise InputError("--threads and --inter-threads must be at least 1")
    if not args.precision_target > 0 or not args.max_time > 0:
        raise InputError("--precision-target and --max-time must be positive")
    if not args.model.exists():
        raise InputError(f"{args.model}: no such model file")
    model = resolve_model(args.model)
    shapes = model.shapes_with(dict(parse_shape_arg(text) for text in args.shape))
    recorded = model.session or SessionKnobs()
    profile = get_profile(args.device, args.profiles)
    try:
        request = MeasureRequest(
            model_path=model.onnx_path,
            session=SessionKnobs(
                intra_op_threads=args.threads or recorded.intra_op_threads,
                inter_op_threads=args.inter_threads or recorded.inter_op_threads,
                graph_optimization=args.graph_opt or recorded.graph_optimization,
                execution_mode=args.execution_mode or recorded.execution_mode,
                providers=profile.execution_providers[:1] or ("CPUExecutionProvider",)),
            shapes=shapes, precision_target=args.precision_target, max_time_s=args.max_time)
    except ValidationError as err:
        raise InputError(f"bad measurement request: {validation_problem(err).message}") from None
    local = profile.latency.method == "local"
    kwargs: dict[str, Any] = {"seed": args.seed, "processes": args.processes} if local else {}
    with create_device(profile, **kwargs) as device:
        stats = device.measure(request)
    if args.json:
        print(stats.to_json())
    else:
        print_stats(stats)
    return 0


def _rows(stats: LatencyStats) -> list[tuple[str, str]]:
    """(label, value) rows of the human report."""
    h = stats.host
    n = len(stats.samples_ms)
    rows = [
        ("device", f"{stats.device} ({stats.source})"),
        ("model", str(stats.extra.get("model_path", ""))),
        ("median", f"{stats.median_ms:.4f} ms"),
        ("95% interval", f"[{stats.ci_low_ms:.4f}, {stats.ci_high_ms:.4f}] ms (±{stats.ci_halfwidth_rel:.2%}; "
                         + ("where a fresh measurement lands)" if "interval" in stats.extra else "of the median)")),
        *([("processes", _processes_text(stats))] if "processes" in stats.extra else []),
        ("p90 / p95 / p99", f"{stats.p90_ms:.4f} / {stats.p95_ms:.4f} / {stats.p99_ms:.4f} ms"),
        ("mean ± stdev", f"{stats.mean_ms:.4f} ± {stats.stdev_ms:.4f} ms"),
        ("CV", f"{stats.cv:.2%}"),
        ("samples", f"{n} (stopped by {stats.stop_reason})"),
        ("warm-up", f"{stats.warmup_runs} runs, {stats.warmup_ms:.0f} ms"),
        ("session load", f"{stats.session_load_ms:.1f} ms"),
        ("first inference", f"{stats.first_run_ms:.2f} ms"),
        ("peak memory", f"{stats.peak_memory_mb:.1f} MB"),
        ("knobs", ", ".join(f"{k}={v}" for k, v in stats.knobs.items())),
        ("CPU", h.cpu_model or "?"),
        ("cores used", ",".join(str(c) for c in h.cores_used) + f" of {h.logical_cores}"),
        ("ONNX Runtime", h.ort_version or "?"),
        ("CPU steal", "n/a" if h.steal_pct is None else f"{h.steal_pct:.2f}%"),
        ("lease wait", f"{stats.lease_wait_s:.3f} s"),
    ]
    if stats.started_at:
        start = datetime.fromtimestamp(stats.started_at).isoformat(timespec="milliseconds")
        rows.append(("interval", f"{start} + {stats.ended_at - stats.started_at:.2f} s"))
    rows.append(("warnings", "; ".join(stats.warnings) if stats.warnings else "none"))
    return rows


def _processes_text(stats: LatencyStats) -> str:
    """``2 used of 3 started (medians 0.61, 0.64 ms; 1 replaced: contended)``."""
    procs = stats.extra.get("processes") or []
    used = [p for p in procs if p.get("used")]
    medians = ", ".join(f"{p['median_ms']:.4g}" for p in used)
    text = f"{len(used)} used of {stats.extra.get('tries', len(procs))} started (medians {medians} ms)"
    discarded = stats.extra.get("discarded", 0)
    return text + (f"; {discarded} replaced as contended/unstable" if discarded else "")


def print_stats(stats: LatencyStats) -> None:
    """A rich table on a terminal, plain ``label: value`` lines otherwise."""
    rows = _rows(stats)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="edge-search measure", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for label, value in rows:
            style = "yellow" if label == "warnings" and stats.warnings else None
            table.add_row(label, value, style=style)
        Console().print(table)
        return
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
