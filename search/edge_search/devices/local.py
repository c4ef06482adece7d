"""`LocalDevice`: latency measured on this machine, in a pinned worker process under a device lease.

Each `measure` call takes the device lease, starts a fresh worker process
(``python -m edge_search.devices.worker``), hands it the request and the allowed cores, and waits
for its `LatencyStats`. A fresh process per measurement costs about a second of start-up but buys
three things: a fresh session by construction, an honest peak-memory figure (the process's own
high-water mark), and no state (allocator arenas, thread pools, caches) carried from one model to
the next. The search process itself never runs a measured inference.

The lease is keyed on the machine (``local@<hostname>``), not on the profile, because two profiles
that pin different cores of one machine still share its caches and memory bandwidth.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from edge_search.devices.base import Device, MeasureRequest, NodeTiming
from edge_search.devices.lease import DeviceLease, FileLease
from edge_search.devices.profile import DeviceProfile
from edge_search.devices.stats import LatencyStats
from edge_search.errors import EdgeSearchError, InputError

#: Seconds a worker gets on top of the request's own time budget (start-up, session load, warm-up).
WORKER_OVERHEAD_S = 90.0


def allowed_cores(profile: DeviceProfile) -> tuple[int, ...]:
    """Cores measurements may use: ``profile.latency.cores``, else this process's affinity set.

    Raises `InputError` when the profile names cores this machine does not have or this process
    may not use.
    """
    available = os.sched_getaffinity(0)
    if profile.latency.cores is None:
        return tuple(sorted(available))
    cores = tuple(sorted(set(profile.latency.cores)))
    missing = [c for c in cores if c not in available]
    if not cores or missing:
        raise InputError(f"device '{profile.name}': latency.cores {list(profile.latency.cores)} are not all "
                         f"available here (available: {sorted(available)})")
    return cores


def training_cores(profile: DeviceProfile) -> tuple[int, ...]:
    """Cores a training process should pin itself to so that it does not disturb measurements.

    The complement of the profile's measurement cores when that leaves any, else every core (on a
    machine too small to split, training and measurement then share cores and the CV shows it).
    """
    available = set(os.sched_getaffinity(0))
    rest = available - set(allowed_cores(profile)) if profile.latency.cores is not None else set()
    return tuple(sorted(rest or available))


class LocalDevice(Device):
    """Measures on this machine; see the module docstring for the process and lease model."""

    latency_source = "measured"

    def __init__(self, profile: DeviceProfile, *, lease: DeviceLease | None = None,
                 lease_timeout_s: float | None = None, worker_timeout_s: float | None = None,
                 allow_spinning: bool = True, seed: int = 0, warmup_max_s: float = 2.0,
                 min_measure_s: float = 0.5, nice: int | None = -10, python: str | None = None) -> None:
        """`lease_timeout_s` None waits for the device for ever; `worker_timeout_s` None derives
        a limit from each request (its time cap plus warm-up plus `WORKER_OVERHEAD_S`); the
        repetition phase lasts at least `min_measure_s` (within the request's time cap); `nice` is
        the scheduling niceness the worker asks for (negative needs privileges; None: inherit)."""
        if profile.latency.method != "local":
            raise InputError(f"device '{profile.name}' has latency.method '{profile.latency.method}', "
                             "not 'local'")
        self.profile = profile
        self.name = profile.name
        self.cores = allowed_cores(profile)
        self.lease = lease if lease is not None else FileLease()
        self.lease_name = f"local@{socket.gethostname()}"
        self.lease_timeout_s = lease_timeout_s
        self.worker_timeout_s = worker_timeout_s
        self.allow_spinning = allow_spinning
        self.seed = seed
        self.warmup_max_s = warmup_max_s
        self.min_measure_s = min_measure_s
        self.nice = nice
        self.python = python or sys.executable

    # --- checks --------------------------------------------------------------------------------

    def check(self, request: MeasureRequest) -> None:
        """Reject what cannot be measured here before any process starts (raises `InputError`)."""
        path = Path(request.model_path)
        if not path.exists():
            raise InputError(f"{path}: no such model file")
        if not path.is_file():
            raise InputError(f"{path}: not a file")
        knobs = request.session
        n = len(self.cores)
        cores_txt = ",".join(str(c) for c in self.cores)
        if knobs.intra_op_threads > n:
            raise InputError(f"intra-op threads {knobs.intra_op_threads} exceed the {n} core(s) device "
                             f"'{self.name}' allows for measurement (cores {cores_txt})")
        if knobs.inter_op_threads > n:
            raise InputError(f"inter-op threads {knobs.inter_op_threads} exceed the {n} core(s) device "
                             f"'{self.name}' allows for measurement (cores {cores_txt})")
        bad = [p for p in knobs.providers if p not in self.profile.execution_providers]
        if bad:
            raise InputError(f"execution provider(s) {', '.join(bad)} not offered by device '{self.name}' "
                             f"(it has {', '.join(self.profile.execution_providers)})")
        if request.precision_target <= 0 or request.max_time_s <= 0:
            raise InputError("precision target and time cap must be positive")

    # --- the worker ----------------------------------------------------------------------------

    def _payload(self, request: MeasureRequest, mode: Literal["measure", "profile"], runs: int = 20) -> str:
        from edge_search.devices.worker.request import WorkerRequest

        wr = WorkerRequest(mode=mode,
                           device=self.name, request=request.model_copy(
                               update={"model_path": Path(request.model_path).resolve()}),
                           cores=self.cores, allow_spinning=self.allow_spinning, seed=self.seed,
                           warmup_max_s=self.warmup_max_s, min_measure_s=self.min_measure_s,
                           nice=self.nice, profile_runs=runs)
        return wr.model_dump_json()

    def _timeout(self, request: MeasureRequest, extra_s: float = 0.0) -> float:
        if self.worker_timeout_s is not None:
            return self.worker_timeout_s
        return WORKER_OVERHEAD_S + 1.5 * request.max_time_s + self.warmup_max_s + extra_s

    def _run_worker(self, payload: str, timeout_s: float, model: Path) -> dict[str, Any]:
        """Start a worker, feed it `payload`, return its parsed result; errors become exceptions."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen([self.python, "-m", "edge_search.devices.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            out, err = proc.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise EdgeSearchError(f"measuring {model} on '{self.name}': worker did not finish within "
                                  f"{timeout_s:g} s and was killed") from None
        lines = [ln for ln in out.splitlines() if ln.strip()]
        result: dict[str, Any] | None = None
        if lines:
            try:
                parsed = json.loads(lines[-1])
                result = parsed if isinstance(parsed, dict) else None
            except ValueError:
                result = None
        if result is None:
            tail = " ".join(err.strip().splitlines()[-3:])[-300:]
            raise EdgeSearchError(f"measuring {model} on '{self.name}': worker exited with code "
                                  f"{proc.returncode} and no result ({tail or 'no stderr'})")
        if "error" in result:
            e = result["error"]
            cls = InputError if e.get("kind") == "input" else EdgeSearchError
            raise cls(str(e.get("message", "measurement failed")))
        return result

    # --- the Device API ------------------------------------------------------------------------

    def measure(self, request: MeasureRequest) -> LatencyStats:
        """Measure `request` in a fresh pinned worker while holding the device lease.

        The result's ``lease_wait_s`` is the time spent waiting for the lease, ``started_at`` and
        ``ended_at`` (``time.time()``) bound the lease-held interval that contains the whole worker.
        """
        self.check(request)
        payload = self._payload(request, "measure")
        with self.lease.acquire(self.lease_name, self.lease_timeout_s) as handle:
            started = time.time()
            result = self._run_worker(payload, self._timeout(request), Path(request.model_path))
            ended = time.time()
        try:
            stats = LatencyStats.from_json(json.dumps(result))
        except ValueError as err:
            raise EdgeSearchError(f"measuring {request.model_path}: unreadable worker result: {err}"
                                  ) from None
        return stats.model_copy(update={"lease_wait_s": handle.wait_s, "started_at": started,
                                        "ended_at": ended})

    def profile_nodes(self, request: MeasureRequest, runs: int = 20) -> list[NodeTiming]:
        """Per-node mean kernel times (ORT profiler) over `runs` runs after warm-up, slowest first."""
        if runs < 1:
            raise InputError("profile runs must be at least 1")
        self.check(request)
        payload = self._payload(request, "profile", runs)
        with self.lease.acquire(self.lease_name, self.lease_timeout_s):
            result = self._run_worker(payload, self._timeout(request, extra_s=60.0), Path(request.model_path))
        return [NodeTiming(name=n["name"], op_type=n["op_type"], mean_us=float(n["mean_us"]),
                           count=int(n["count"]), provider=n.get("provider", ""),
                           min_us=float(n["min_us"]) if "min_us" in n else None) for n in result["nodes"]]
