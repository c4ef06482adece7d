"""Host probes: what a measurement records about the machine it ran on (CPU model, steal time,
other processes' share of the cores, throttling, peak memory). The one home of these probes: the
worker, the emulator and the calibration all read the CPU model from here."""

from __future__ import annotations

import os
import platform
import resource
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (``model name``, else ``Hardware``/``Processor``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields.get("model name") or fields.get("Hardware") or fields.get("Processor") or platform.machine()


def host_id() -> str:
    """What a host calibration is valid for: the CPU model and the ONNX Runtime version
    (``"<cpu model> / onnxruntime <version>"``, the format of ``Calibration.reference_host``)."""
    try:
        import onnxruntime as ort

        version = ort.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        version = "?"
    return f"{cpu_model()} / onnxruntime {version}"


def read_cpu_times(cores: Sequence[int]) -> dict[int, tuple[int, int, int]]:
    """(steal, total, busy) jiffies per core from /proc/stat; empty where unavailable.

    busy = total - idle - iowait (steal included: time the core did not run for us or anybody here).
    """
    out: dict[int, tuple[int, int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    wanted = {f"cpu{c}": c for c in cores}
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            vals = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
            vals += [0] * (8 - len(vals))
            out[wanted[parts[0]]] = (vals[7], sum(vals), sum(vals) - vals[3] - vals[4])
    return out


CpuTimes = dict[int, tuple[int, int, int]]


def steal_pct(before: CpuTimes, after: CpuTimes) -> float | None:
    """Share (%) of the cores' time stolen by the hypervisor between two `read_cpu_times`."""
    d_steal = d_total = 0
    for core, (s1, t1, _) in after.items():
        if core in before:
            s0, t0, _ = before[core]
            d_steal += s1 - s0
            d_total += t1 - t0
    if d_total <= 0:
        return None
    return 100.0 * d_steal / d_total


def others_pct(before: CpuTimes, after: CpuTimes, own_cpu_s: float) -> float | None:
    """Share (%) of the cores' time that went to anything but this process (other processes, steal).

    The cores' busy jiffies between two `read_cpu_times`, minus this process's own CPU seconds.
    Jiffies are coarse (10 ms at 100 Hz), so short runs read a few percent either way.
    """
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    d_busy = d_total = 0
    for core, (_, t1, b1) in after.items():
        if core in before:
            _, t0, b0 = before[core]
            d_busy += b1 - b0
            d_total += t1 - t0
    if d_total <= 0:
        return None
    return max(0.0, 100.0 * (d_busy - own_cpu_s * hz) / d_total)


def read_schedstat() -> tuple[int, int] | None:
    """(CPU ns, run-queue wait ns) summed over this process's threads; None without schedstat.

    ``/proc/self/task/<tid>/schedstat`` holds, per thread, the time it ran and the time it was
    runnable but waited for a CPU. The wait of the threads that run inferences is the contention a
    measurement really suffered, whatever the rest of the machine does.
    """
    run = wait = 0
    found = False
    for path in Path("/proc/self/task").glob("*/schedstat"):
        try:
            fields = path.read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
            found = True
        except (OSError, ValueError, IndexError):
            continue
    return (run, wait) if found else None


def runq_wait_pct(before: tuple[int, int] | None, after: tuple[int, int] | None, wall_s: float,
                  threads: int) -> float | None:
    """Share (%) of `wall_s` x `threads` that this process's threads spent waiting for a CPU
    between two `read_schedstat` calls (None when unknown)."""
    if before is None or after is None or wall_s <= 0 or threads < 1:
        return None
    return max(0.0, 100.0 * (after[1] - before[1]) / 1e9 / (wall_s * threads))


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_throttle(cores: Sequence[int]) -> dict[str, dict[int, int]]:
    """Thermal throttle counters and current frequency (kHz) per core, where the kernel has them."""
    base = Path("/sys/devices/system/cpu")
    counts: dict[int, int] = {}
    freqs: dict[int, int] = {}
    for c in cores:
        n = _read_int(base / f"cpu{c}/thermal_throttle/core_throttle_count")
        if n is not None:
            counts[c] = n
        f = _read_int(base / f"cpu{c}/cpufreq/scaling_cur_freq")
        if f is not None:
            freqs[c] = f
    return {"throttle_count": counts, "freq_khz": freqs}


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakMemory:
    """Peak RSS added over a baseline: Linux's resettable high-water mark, else ``ru_maxrss``.

    `start` resets VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``) and records that
    RSS as the baseline; `peak_mb` is then VmHWM minus the baseline. Where the reset is not allowed
    it falls back to the ``ru_maxrss`` delta, which is exact in a fresh process whose imports did
    not already push the high-water mark above what the session needs.
    """

    def __init__(self) -> None:
        self.method = "none"
        self.base_kb = 0

    def start(self) -> None:
        """Take the baseline, just before the session is created."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = _status_kb("VmRSS")
            if rss is not None and _status_kb("VmHWM") is not None:
                self.method, self.base_kb = "vmhwm_reset", rss
                return
        except OSError:
            pass
        self.method, self.base_kb = "ru_maxrss_delta", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def peak_mb(self) -> float:
        """Peak MB above the baseline since `start`."""
        if self.method == "vmhwm_reset":
            hwm = _status_kb("VmHWM") or self.base_kb
        else:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return max(hwm - self.base_kb, 0) / 1024.0


def host_info(cores: Sequence[int], ort_version: str, steal: float | None) -> dict[str, Any]:
    """The `HostInfo` fields of a measurement on `cores` of this machine."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count() or 0,
        "cores_used": tuple(sorted(cores)),
        "ort_version": ort_version,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "steal_pct": steal,
    }
