"""`board_state()`: temperatures, throttling, load and memory of the machine the agent runs on.

Everything is read from where Linux exposes it (``/sys/class/thermal``, the Raspberry Pi firmware's
``get_throttled``, ``/proc`` through psutil); what this OS does not expose stays None or empty.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_search.agent.protocol import BoardState

THERMAL_ROOT = Path("/sys/class/thermal")
RPI_THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_temperatures(root: Path = THERMAL_ROOT) -> tuple[dict[str, float], bool | None]:
    """Thermal zone type -> °C, and whether any zone is at or above its passive trip point.

    The second value is None when no zone has a passive trip point (nothing to compare against).
    """
    temps: dict[str, float] = {}
    hot: bool | None = None
    for zone in sorted(root.glob("thermal_zone*")):
        raw = _read(zone / "temp")
        if raw is None:
            continue
        try:
            celsius = int(raw) / 1000.0
        except ValueError:
            continue
        kind = _read(zone / "type") or zone.name
        temps[kind if kind not in temps else f"{kind}.{zone.name}"] = celsius
        for trip in zone.glob("trip_point_*_type"):
            if _read(trip) != "passive":
                continue
            limit = _read(trip.with_name(trip.name.replace("_type", "_temp")))
            try:
                at_trip = limit is not None and celsius * 1000.0 >= int(limit) > 0
            except ValueError:
                continue
            hot = bool(hot) or at_trip
    return temps, hot


def read_throttled(rpi_flags: Path = RPI_THROTTLED, root: Path = THERMAL_ROOT) -> tuple[bool | None, str]:
    """Whether the board is throttling now, and where that came from ('' when unknown).

    Raspberry Pi firmware flags (bits 1 and 2: capped or throttled now) win; otherwise a thermal
    zone at or above its passive trip point counts as throttling.
    """
    flags = _read(rpi_flags)
    if flags is not None:
        try:
            value = int(flags, 16)
            return bool(value & 0x6), "rpi-firmware"
        except ValueError:
            pass
    _, hot = read_temperatures(root)
    return (hot, "thermal-trip") if hot is not None else (None, "")


def board_state() -> BoardState:
    """A snapshot of the board (cheap: a few small file reads)."""
    import psutil

    temps, _ = read_temperatures()
    throttled, source = read_throttled()
    vm = psutil.virtual_memory()
    freq = None
    try:
        f = psutil.cpu_freq()
        freq = float(f.current) if f is not None else None
    except (OSError, RuntimeError, NotImplementedError):
        freq = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return BoardState(temperatures_c=temps, throttled=throttled, throttle_source=source,
                      load_avg=(float(load[0]), float(load[1]), float(load[2])),
                      cpu_percent=float(psutil.cpu_percent(interval=None)), cpu_freq_mhz=freq,
                      memory_total_mb=vm.total / 2**20, memory_available_mb=vm.available / 2**20)
