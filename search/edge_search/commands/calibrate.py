"""`edge-search calibrate`: fit a device profile's calibration block and write the profile YAML.

``--device host`` measures the reference suite on this machine; an agent profile (a board you own)
measures it on the board through its agent (`board_calibration`); a board profile is refitted from
published figures with ``--from-csv PATH`` (default: the CSV shipped in the package).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_search.devices.profile import Calibration, DeviceProfile


def configure(p: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    p.add_argument("--device", required=True, help="profile to calibrate: host, or a board profile name")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="profile YAML to write (default: edge-search-profiles/<device>.yaml; use it with --profiles)",
    )
    p.add_argument("--quick", action="store_true", help="host or agent board: half the suite, fp32 only, fewer runs")
    p.add_argument("--families", default=None,
                   help="host or agent board: comma-separated reference-suite families to measure (default: all)")
    p.add_argument("--emulated-as", default=None, metavar="NAME",
                   help="agent board: also write NAME.yaml beside --out, an emulated sibling profile that predicts "
                        "with the board's new calibration")
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

    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    if args.emulated_as is not None and profiles[args.device].latency.method != "agent":
        raise InputError("--emulated-as needs an agent profile (latency.method: agent)")
    if profiles[args.device].latency.method == "agent":
        fitted = _calibrate_agent(profiles[args.device], profiles["host"], families, args.quick, progress)
        figures = fitted.fit_stats
    elif args.device == "host" or profiles[args.device].latency.method == "local":
        fitted, _ = cal.calibrate_host(profiles[args.device], quick=args.quick, families=families,
                                       progress=progress)
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
    if args.emulated_as is not None:
        sibling = _write_sibling(load_profile_file(out), args.emulated_as, out.parent)
        print(f"wrote {sibling}: emulated sibling '{args.emulated_as}' predicting with this calibration")
    print(f"use it with: --profiles {out.parent}")
    return 0


def _calibrate_agent(board: DeviceProfile, host: DeviceProfile, families: list[str] | None, quick: bool,
                     progress: Callable[[str], None]) -> Calibration:
    """Measure the reference suite on the board through its agents, fit its calibration."""
    from edge_search.devices.agent import AgentDevice
    from edge_search.devices.emulation.board_calibration import calibrate_through_device
    from edge_search.devices.local import LocalDevice
    from edge_search.errors import InputError

    if not host.calibration.params:
        raise InputError("the host profile is not calibrated: run `edge-search calibrate --device host` first")
    if quick and families is None:
        from edge_search.devices.emulation.reference_suite import HOST_SUITE

        families = sorted({m.family for m in HOST_SUITE[::2]})
    with AgentDevice(board) as device:
        fitted, _ = calibrate_through_device(board, device, LocalDevice(host), host, families=families,
                                             precisions=("fp32",) if quick else ("fp32", "int8"),
                                             max_time_s=1.0 if quick else 1.5, repeats=2 if quick else 3,
                                             progress=progress)
    return fitted


def _write_sibling(board: DeviceProfile, name: str, folder: Path) -> Path:
    """An emulated copy of `board` named `name` (same hardware, the new calibration) in `folder`."""
    import yaml

    from edge_search.devices.profile import parse_profile

    data = board.model_dump(mode="json", exclude_defaults=True)
    data.update({"name": name, "description": f"emulated sibling of {board.name}, calibrated through its agent",
                 "latency": {"method": "emulated"}})
    parse_profile(data, f"{name}.yaml")  # what is written must load
    path = folder / f"{name}.yaml"
    path.write_text(f"# Emulated sibling of {board.name}: written by edge-search calibrate --device {board.name} "
                    f"--emulated-as {name}\n" + yaml.safe_dump(data, sort_keys=False, width=200, allow_unicode=True))
    return path
