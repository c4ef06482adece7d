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
    p.add_argument("--no-probe", action="store_true", help="do not contact the agents of agent profiles")


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
                "validation": cal.physics.validation if cal.physics else {},
            }
        )
    return rows


def _validation_cell(v: dict[str, dict[str, float]]) -> str:
    """Held-out (leave-one-family-out) figures per path: median |error|, share within ±30 %, coverage."""
    parts = []
    for path, f in sorted(v.items()):
        if f.get("n", 0) >= 1:
            parts.append(f"{path}: n={f['n']:.0f} med {f['median_abs_err']:.0%} "
                         f"±30% {f['within_30']:.0%} cov {f['coverage']:.0%}")
    return "\n".join(parts) or "-"


def agent_rows(profiles: dict[str, Any], timeout_s: float = 2.0) -> list[dict[str, Any]]:
    """One row per agent of every agent profile, from a heartbeat sent now (in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    from edge_search.devices.agent import agent_token, agent_verify, probe
    from edge_search.errors import EdgeSearchError

    def one(name: str, address: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"profile": name, "url": address.url, "state": "down", "queue_length": None,
                               "last_heartbeat": None, "error": ""}
        try:
            h = probe(address.url, agent_token(address), timeout_s, verify=agent_verify(address))
        except EdgeSearchError as err:
            row["error"] = str(err)
            return row
        row.update(state="busy" if h.busy else "idle", queue_length=h.queue_length,
                   last_heartbeat=h.server_time, measurements=h.measurements, agent_device=h.device)
        return row

    jobs = [(n, a) for n, p in sorted(profiles.items()) if p.latency.method == "agent" for a in p.latency.agents]
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
        return list(pool.map(lambda job: one(*job), jobs))


def run(args: argparse.Namespace) -> int:
    """List profiles (and the state of their agents); exit 2 on a bad profile file."""
    from edge_search.devices.profile import load_profiles

    profiles = load_profiles(args.profiles)
    rows = device_rows(profiles)
    agents = [] if args.no_probe else agent_rows(profiles)
    if args.json:
        print(
            json.dumps(
                {"profiles": rows, "agents": agents,
                 "details": {n: p.model_dump(mode="json") for n, p in profiles.items()}},
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="device profiles")
    for col in ("name", "method", "cpu", "RAM", "accelerator", "precisions", "calibration", "band",
                "held-out families (LOFO)"):
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
            _validation_cell(r["validation"]),
        )
    Console(width=200).print(table)
    if agents:
        from datetime import datetime

        at = Table(title="agents")
        for col in ("profile", "agent", "state", "queue", "last heartbeat", "note"):
            at.add_column(col)
        for a in agents:
            beat = datetime.fromtimestamp(a["last_heartbeat"]).isoformat(timespec="seconds") \
                if a["last_heartbeat"] else "-"
            queue = "-" if a["queue_length"] is None else str(a["queue_length"])
            at.add_row(a["profile"], a["url"], a["state"], queue, beat, a["error"][:80])
        Console(width=200).print(at)
    return 0
