"""`edge-search devices`: list the device profiles (built-in and --profiles), as a table or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def configure(p: argparse.ArgumentParser) -> None:
    """Add the command's arguments."""
    p.add_argument("--json", action="store_true", help="print the profiles as JSON")
    p.add_argument(
        "--profiles",
        type=Path,
        action="append",
        default=[],
        help="extra device profile file or folder (repeatable; overrides built-ins by name)",
    )


def device_rows(profiles: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per profile: what the table shows."""
    rows = []
    for name, p in sorted(profiles.items()):
        cal = p.calibration
        band = cal.error_band.value if cal.error_band else None
        band_gpu = cal.error_band_gpu.value if cal.error_band_gpu else None
        rows.append(
            {
                "name": name,
                "method": p.latency.method,
                "arch": p.cpu.architecture,
                "core": p.cpu.core_type,
                "cores": p.cpu.cores,
                "clock_ghz": p.cpu.clock_ghz,
                "ram_mb": p.memory.ram_mb,
                "accelerator": p.accelerator.name if p.accelerator else None,
                "precisions": list(p.precisions),
                "providers": list(p.execution_providers),
                "version": p.version,
                "calibrated": bool(cal.params),
                "calibration_note": cal.runtime_note,
                "error_band": band,
                "error_band_gpu": band_gpu,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """List profiles; exit 2 on a bad profile file."""
    from edge_search.devices.profile import load_profiles

    profiles = load_profiles(args.profiles)
    rows = device_rows(profiles)
    if args.json:
        print(
            json.dumps(
                {"profiles": rows, "details": {n: p.model_dump(mode="json") for n, p in profiles.items()}},
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="device profiles")
    for col in ("name", "method", "cpu", "RAM", "accelerator", "precisions", "calibration", "band"):
        table.add_column(col)
    for r in rows:
        band = "-" if r["error_band"] is None else f"±{r['error_band']:.0%}"
        if r["error_band_gpu"] is not None:
            band += f" (gpu ±{r['error_band_gpu']:.0%})"
        note = r["calibration_note"] or ("calibrated" if r["calibrated"] else "not calibrated")
        table.add_row(
            r["name"],
            r["method"],
            f"{r['cores']}x {r['core']} {r['clock_ghz']:g} GHz ({r['arch']})",
            f"{r['ram_mb'] / 1024:g} GB",
            r["accelerator"] or "-",
            ",".join(r["precisions"]),
            note[:60],
            band,
        )
    Console(width=200).print(table)
    return 0
