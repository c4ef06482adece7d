"""`LocalDevice`: latency measured on this machine, in pinned worker processes under a device lease.

Each `measure` call takes the device lease and runs `processes` fresh worker processes one after
the other (``python -m edge_search.devices.worker``), each with the request and the allowed cores,
and combines their `LatencyStats` (`edge_search.devices.processes`): the process is the unit of
the interval, because fresh processes land several per cent apart on a VM. A worker the engine
flags `contended` or `unstable` is replaced by a new one after a short pause, at most
`max_retries` times per measurement; the result records ``extra["tries"]``. A fresh process per
figure costs about half a second of start-up but buys a fresh session by construction, an honest
peak-memory figure (the process's own high-water mark), and no state (allocator arenas, thread
pools, caches) carried from one model to the next. The search process itself never runs a
measured inference. `measure_round` measures several models in ONE worker, in a given order (a
confirmation round).

The lease is keyed on the machine (``local@<hostname>``), not on the profile, because two profiles
that pin different cores of one machine still share its caches and memory bandwidth. It expires
unless renewed (`edge_search.devices.lease`): a measurement whose lease was lost meanwhile (this
process was stopped for longer than the lease's ttl) is discarded and measured again, at most
`LEASE_ATTEMPTS` times, and the worker stops itself as soon as the lease goes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from edge_search.devices.base import Device, MeasureRequest, NodeTiming
from edge_search.devices.capabilities import ort_available_providers
from edge_search.devices.lease import DeviceLease, FileLease, LeaseHandle, LeaseLost
from edge_search.devices.noise import HostNoise
from edge_search.devices.processes import combine_processes, contention, needs_retry
from edge_search.devices.profile import DeviceProfile
from edge_search.devices.stats import LatencyStats
from edge_search.errors import EdgeSearchError, InputError
from edge_search.expiring_lease import GUARD_ENV, LEASE_LOST_EXIT

#: Seconds a worker gets on top of the request's own time budget (start-up, session load, warm-up).
WORKER_OVERHEAD_S = 90.0
#: Pause before replacing a flagged worker (doubled each time): contention often comes in bursts.
RETRY_PAUSE_S = 0.5

LEASE_ATTEMPTS = 3
"""Measurements discarded because the device lease was lost before `measure` gives up."""

log = logging.getLogger(__name__)


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
                 allow_spinning: bool = True, seed: int = 0, warmup_max_s: float = 1.0,
                 min_measure_s: float = 0.25, nice: int | None = -10, python: str | None = None,
                 processes: int = 2, max_retries: int = 2, noise: HostNoise | None = None,
                 autogroup: bool = True) -> None:
        """`lease_timeout_s` None waits for the device for ever; `worker_timeout_s` None derives
        a limit from each request (its time cap plus warm-up plus `WORKER_OVERHEAD_S`); each
        worker's repetition phase lasts at least `min_measure_s` (within the request's time cap);
        `nice` is the scheduling niceness the worker asks for (negative needs privileges; None:
        inherit); `processes` workers make one measurement, and up to `max_retries` more replace
        flagged ones; `noise` is the host's noise model (default: this host's store); `autogroup`
        False keeps workers in the caller's autogroup (their niceness then orders them only against
        this session's own work)."""
        if processes < 1 or max_retries < 0:
            raise InputError("a measurement needs at least 1 worker process and max_retries >= 0")
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
        self.processes = processes
        self.max_retries = max_retries
        self.noise = noise if noise is not None else HostNoise()
        self.autogroup = autogroup

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
        available = ort_available_providers()
        missing = [p for p in knobs.providers if p not in available]
        if missing:
            raise InputError(f"execution provider(s) {', '.join(missing)} not available in ONNX Runtime on "
                             f"this machine (available: {', '.join(available)}); refused rather than "
                             "measured on a silent CPU fallback")
        if request.precision_target <= 0 or request.max_time_s <= 0:
            raise InputError("precision target and time cap must be positive")

    # --- the worker ----------------------------------------------------------------------------

    def _payload(self, request: MeasureRequest, mode: Literal["measure", "profile", "rounds"], runs: int = 20,
                 batch: Sequence[MeasureRequest] = ()) -> str:
        from edge_search.devices.worker.request import WorkerRequest

        def absolute(r: MeasureRequest) -> MeasureRequest:
            return r.model_copy(update={"model_path": Path(r.model_path).resolve()})

        wr = WorkerRequest(mode=mode, device=self.name, request=absolute(request),
                           batch=tuple(absolute(r) for r in batch),
                           cores=self.cores, allow_spinning=self.allow_spinning, seed=self.seed,
                           warmup_max_s=self.warmup_max_s, min_measure_s=self.min_measure_s,
                           nice=self.nice, profile_runs=runs, autogroup=self.autogroup)
        return wr.model_dump_json()

    def _timeout(self, request: MeasureRequest, extra_s: float = 0.0) -> float:
        if self.worker_timeout_s is not None:
            return self.worker_timeout_s
        return WORKER_OVERHEAD_S + 1.5 * request.max_time_s + self.warmup_max_s + extra_s

    def _run_worker(self, payload: str, timeout_s: float, model: Path,
                    lease: LeaseHandle | None = None) -> dict[str, Any]:
        """Start a worker, feed it `payload`, return its parsed result; errors become exceptions.

        Under a `lease` the worker is registered with it, gets its guard (it stops itself as soon
        as the lease goes, even if this process is frozen) and is killed when this process finds
        the lease lost; a lost lease raises `LeaseLost`, never returns a result."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        guard = lease.guard if lease is not None else None
        if guard is not None:
            env[GUARD_ENV] = guard.to_env()
        proc = subprocess.Popen([self.python, "-m", "edge_search.devices.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        if lease is not None:
            lease.attach(proc.pid)
            lease.on_lost(lambda _reason: proc.kill())
        try:
            out, err = proc.communicate(payload, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise EdgeSearchError(f"measuring {model} on '{self.name}': worker did not finish within "
                                  f"{timeout_s:g} s and was killed") from None
        if lease is not None:
            lease.check()
        if proc.returncode == LEASE_LOST_EXIT:
            raise LeaseLost(f"device '{self.name}': the measuring worker stopped: the lease went")
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
        """Measure `request` in `processes` fresh pinned workers while holding the device lease.

        A worker flagged `contended`/`unstable` is replaced (after a pause) while the retry budget
        allows; when it does not, the least contended results are used and their warnings stay.
        The result's ``lease_wait_s`` is the time spent waiting for the lease, ``started_at`` and
        ``ended_at`` (``time.time()``) bound the lease-held interval that contains every worker.
        """
        self.check(request)
        payload = self._payload(request, "measure")
        threads = _threads(request)
        prior = self.noise.prior(threads)
        for attempt in range(1, LEASE_ATTEMPTS + 1):
            used: list[LatencyStats] = []
            flagged: list[LatencyStats] = []
            budget = self.processes + self.max_retries
            try:
                with self.lease.acquire(self.lease_name, self.lease_timeout_s) as handle:
                    started = time.time()
                    tries = 0
                    while len(used) < self.processes:
                        stats = self._one_worker(payload, request, handle)
                        tries += 1
                        if needs_retry(stats) and budget - tries >= self.processes - len(used):
                            flagged.append(stats)
                            time.sleep(RETRY_PAUSE_S * 2 ** (len(flagged) - 1))
                            continue
                        used.append(stats)
                    ended = time.time()
                    handle.check()  # after `ended`: nobody else measured on the device in between
                break
            except LeaseLost as err:
                if attempt == LEASE_ATTEMPTS:
                    raise EdgeSearchError(f"measuring {request.model_path}: the device lease was lost "
                                          f"{attempt} times; last: {err}") from None
                log.warning("measurement of %s discarded (%s); measuring again", request.model_path, err)
        # Every try flagged: of all of them, keep the least contended as the figure.
        if all(needs_retry(s) for s in used) and flagged:
            pool = sorted(used + flagged, key=contention)
            used, flagged = pool[: self.processes], pool[self.processes:]
        if len(used) > 1:
            self.noise.record_processes(threads, [s.median_ms for s in used])
        combined = combine_processes(used, prior, discarded=flagged)
        return combined.model_copy(update={"lease_wait_s": handle.wait_s, "started_at": started,
                                           "ended_at": ended})

    def _one_worker(self, payload: str, request: MeasureRequest, handle: LeaseHandle) -> LatencyStats:
        result = self._run_worker(payload, self._timeout(request), Path(request.model_path), handle)
        try:
            return LatencyStats.from_json(json.dumps(result))
        except ValueError as err:
            raise EdgeSearchError(f"measuring {request.model_path}: unreadable worker result: {err}"
                                  ) from None

    def measure_round(self, requests: Sequence[MeasureRequest]) -> list[LatencyStats]:
        """One confirmation round: every request measured once, in the given order, in ONE fresh
        worker process (one session at a time), under the device lease. Returns one single-process
        `LatencyStats` per request, in the order given."""
        if not requests:
            return []
        for r in requests:
            self.check(r)
        payload = self._payload(requests[0], "rounds", batch=requests)
        timeout = sum(self._timeout(r) - WORKER_OVERHEAD_S for r in requests) + WORKER_OVERHEAD_S
        for attempt in range(1, LEASE_ATTEMPTS + 1):
            try:
                with self.lease.acquire(self.lease_name, self.lease_timeout_s) as handle:
                    result = self._run_worker(payload, timeout, Path(requests[0].model_path), handle)
                    handle.check()  # a round measured while another process held the device is not one
                break
            except LeaseLost as err:
                if attempt == LEASE_ATTEMPTS:
                    raise EdgeSearchError(f"a confirmation round on '{self.name}': the device lease was lost "
                                          f"{attempt} times; last: {err}") from None
                log.warning("confirmation round discarded (%s); measuring it again", err)
        try:
            return [LatencyStats.model_validate(r) for r in result["results"]]
        except (KeyError, TypeError, ValueError) as err:
            raise EdgeSearchError(f"a confirmation round on '{self.name}' returned an unreadable result: {err}"
                                  ) from None

    def profile_nodes(self, request: MeasureRequest, runs: int = 20) -> list[NodeTiming]:
        """Per-node mean kernel times (ORT profiler) over `runs` runs after warm-up, slowest first."""
        if runs < 1:
            raise InputError("profile runs must be at least 1")
        self.check(request)
        payload = self._payload(request, "profile", runs)
        with self.lease.acquire(self.lease_name, self.lease_timeout_s) as handle:
            result = self._run_worker(payload, self._timeout(request, extra_s=60.0), Path(request.model_path),
                                      handle)
        return [NodeTiming(name=n["name"], op_type=n["op_type"], mean_us=float(n["mean_us"]),
                           count=int(n["count"]), provider=n.get("provider", ""),
                           min_us=float(n["min_us"]) if "min_us" in n else None) for n in result["nodes"]]


def _threads(request: MeasureRequest) -> int:
    """Threads a request's inference runs on (the key of the host's noise model)."""
    k = request.session
    return k.intra_op_threads * (k.inter_op_threads if k.execution_mode == "parallel" else 1)
