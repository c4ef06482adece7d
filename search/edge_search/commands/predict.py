"""`edge-search predict`: predicted latency of an ONNX model on a device profile, with its interval.

A bundle folder (from `edge-search export`) is predicted at the input shapes and thread count its
`bundle.json` records; ``--shape`` and ``--threads`` override them.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    p.add_argument("model", type=Path, help="ONNX model file, or a bundle folder from `edge-search export`")
    p.add_argument("--device", required=True, help="device profile name (see `edge-search devices`)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads on the target (default: the bundle's, else 1)")
    p.add_argument(
        "--provider",
        action="append",
        default=None,
        help="execution provider on the target (repeatable; e.g. CUDAExecutionProvider for a GPU path)",
    )
    p.add_argument(
        "--graph-only",
        action="store_true",
        help="graph-only estimate from FLOPs/bytes (nothing executed; a wider interval)",
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=D0,D1,...",
        help="concrete shape for an input with dynamic dimensions (repeatable; a bundle records its own)",
    )
    p.add_argument("--json", action="store_true", help="print the LatencyStats JSON")
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        default=[],
        help="extra device profile file or folder (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Predict and print; exit 2 on bad input (unknown device, missing model, impossible knobs)."""
    from edge_search.bundle.resolve import resolve_model
    from edge_search.devices.base import MeasureRequest, SessionKnobs
    from edge_search.devices.emulated import EmulatedDevice
    from edge_search.devices.emulation.carry import estimate_graph
    from edge_search.devices.inputs import parse_shape_arg
    from edge_search.devices.profile import get_profile
    from edge_search.errors import InputError

    profile = get_profile(args.device, args.profiles)
    if not args.model.exists():
        raise InputError(f"{args.model}: no such model file")
    if args.threads is not None and args.threads < 1:
        raise InputError("--threads must be at least 1")
    model = resolve_model(args.model)
    threads = args.threads or (model.session.intra_op_threads if model.session else 1)
    providers = tuple(args.provider) if args.provider else ("CPUExecutionProvider",)
    knobs = SessionKnobs(intra_op_threads=threads, providers=providers)
    shapes = model.shapes_with(dict(parse_shape_arg(text) for text in args.shape))
    path = model.onnx_path
    if args.graph_only:
        stats = estimate_graph(path, profile, knobs, shapes or None)
    else:
        from edge_search.devices import create_device

        # an emulated profile also needs --profiles to find a calibrated host profile there
        device = (EmulatedDevice(profile, profile_dirs=args.profiles) if profile.latency.method == "emulated"
                  else create_device(profile))
        with device:
            stats = device.measure(MeasureRequest(model_path=path, session=knobs, shapes=shapes))
    if args.json:
        print(stats.to_json())
        return 0
    kind = {"graph": "graph-only estimate", "profile": "prediction", "physics": "prediction"}.get(
        stats.extra.get("method", ""), "measured"
    )
    print(
        f"{args.model.name} on {profile.name} ({kind}, {stats.source}; {threads} thread(s)): "
        f"{stats.median_ms:.2f} ms  [{stats.ci_low_ms:.2f}, {stats.ci_high_ms:.2f}]"
    )
    ex = stats.extra
    if "breakdown" in ex:
        parts = sorted(ex["breakdown"].items(), key=lambda kv: -kv[1]["target_ms"])
        print("  by class: " + ", ".join(f"{k} {v['target_ms']:.2f} ms" for k, v in parts[:6]))
        print(
            f"  overhead {ex.get('overhead_ms', 0):.2f} ms; "
            f"profile {ex.get('profile')} v{ex.get('profile_version')}"
            f"; {ex.get('calibration_note') or 'no calibration note'}"
        )
    if ex.get("fits_memory") is not None:
        print(
            f"  peak memory {stats.peak_memory_mb:.0f} MB of {ex['usable_memory_mb']:.0f} MB usable: "
            f"{'fits' if ex['fits_memory'] else 'DOES NOT FIT'}"
        )
    for w in stats.warnings:
        print(f"  warning: {w}")
    return 0
