"""`edge-search calibrate`: fit a device profile's calibration block and write the profile YAML.

``--device host`` measures the reference suite on this machine; a board profile is refitted from
published figures with ``--from-csv PATH`` (default: the CSV shipped in the package).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    p.add_argument("--device", required=True, help="profile to calibrate: host, or a board profile name")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="profile YAML to write (default: edge-search-profiles/<device>.yaml; use it with --profiles)",
    )
    p.add_argument("--quick", action="store_true", help="host: half the suite, fp32 only, fewer runs")
    p.add_argument(
        "--from-csv",
        type=Path,
        default=None,
        help="board: published latency CSV in the published_latency_v2.csv format (default: the one shipped "
        "in the package, with published_device_latency.csv beside it)",
    )
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        default=[],
        help="extra device profile file or folder (repeatable)",
    )


def _source_text(name: str, dirs: list[Path]) -> str:
    from importlib import resources

    for d in reversed(dirs):
        files = [d] if d.is_file() else sorted(d.glob("*.yaml"))
        for f in files:
            if f"name: {name}" in f.read_text():
                return f.read_text()
    return (resources.files("edge_search.device_profiles") / f"{name}.yaml").read_text()


def run(args: argparse.Namespace) -> int:
    """Measure or fit, then write the profile; exit 2 on bad input."""
    from importlib import resources

    from edge_search.devices.emulation import calibration as cal
    from edge_search.devices.profile import load_profile_file, load_profiles
    from edge_search.errors import InputError

    profiles = load_profiles(args.profiles)
    if args.device not in profiles:
        raise InputError(f"unknown device '{args.device}' (known: {', '.join(sorted(profiles))})")
    out: Path = args.out or Path("edge-search-profiles") / f"{args.device}.yaml"

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    if args.device == "host" or profiles[args.device].latency.method == "local":
        fitted, _ = cal.calibrate_host(profiles[args.device], quick=args.quick, progress=progress)
        figures = fitted.fit_stats
    else:
        from edge_search.devices.emulation.boards import board_calibration, calibrate_boards

        fit = calibrate_boards(profiles, v2=args.from_csv, progress=progress)
        fitted = board_calibration(fit.physics[args.device])
        figures = fitted.fit_stats
    out.parent.mkdir(parents=True, exist_ok=True)
    if (
        out.resolve()
        != Path(str(resources.files("edge_search.device_profiles") / f"{args.device}.yaml")).resolve()
    ):
        out.write_text(_source_text(args.device, args.profiles))
    cal.write_calibration(out, fitted)
    load_profile_file(out)  # what was written must load
    band = fitted.error_band.value if fitted.error_band else float("nan")
    stats = ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
    print(
        f"wrote {out}: {len(fitted.params)} parameters, error band ±{band:.0%}"
        + (f" ({stats})" if stats else "")
    )
    print(f"use it with: --profiles {out.parent}")
    return 0
