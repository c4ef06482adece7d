"""Exclusive device leases: two measurements never overlap on one device.

A measurement holds a lease on its device for as long as it runs, whatever else runs around it
(parallel trials, a CI check, a second `edge-search measure`). `DeviceLease` is the seam; the
implementation here, `FileLease`, is an `edge_search.expiring_lease.ExpiringLease` in a lock folder
shared by all processes on one machine: renewed by its holder, lost ``ttl`` seconds after the
holder dies *or freezes* (an OS ``flock`` would be held by a stopped process for ever), taken over
at once when the holder and its measuring worker are both dead. A distributed lease (Redis, a
database row, the board agent's own queue) can replace it by implementing `acquire`.

A lease can be lost while held (its holder was stopped for longer than the ttl): `LeaseHandle.check`
then raises `LeaseLost`, and whatever was measured under it is discarded, because someone else may
have measured at the same time. A worker process started under the lease gets its `guard` and
stops itself when the lease goes.

The lock folder is ``~/.cache/edge-search/locks`` unless the environment variable
``EDGE_SEARCH_LOCK_DIR`` names another one (tests and CI use that to keep runs apart); the ttl is
10 s unless ``EDGE_SEARCH_LEASE_TTL`` says otherwise.
"""

from __future__ import annotations

import abc
import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_search.expiring_lease import (
    DEFAULT_LOCK_DIR,
    LOCK_DIR_ENV,
    ExpiringLease,
    HeldLease,
    LeaseGuard,
    LeaseLost,
    LeaseTimeout,
    default_lock_dir,
)

__all__ = ["DEFAULT_LOCK_DIR", "LOCK_DIR_ENV", "DeviceLease", "FileLease", "LeaseHandle", "LeaseLost",
           "LeaseTimeout", "default_lock_dir"]


class LeaseHandle:
    """A held lease: which device, how long the caller waited, when it got it, and whether it still
    holds (`check`)."""

    def __init__(self, device: str, wait_s: float, acquired_at: float, held: HeldLease | None = None) -> None:
        self.device = device
        self.wait_s = wait_s
        """Seconds spent waiting for the lease (0 when the device was free)."""
        self.acquired_at = acquired_at
        """Wall-clock time (``time.time()``) at which the lease was granted."""
        self._held = held
        self._reason: str | None = None
        self._callbacks: list[Callable[[str], None]] = []
        self._checks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        if held is not None:
            held.on_lost(self.lose)

    @property
    def guard(self) -> LeaseGuard | None:
        """What a worker process needs to stop itself when the lease goes (None: nothing to watch)."""
        return self._held.guard if self._held is not None else None

    def attach(self, pid: int) -> None:
        """Record a worker process measuring under this lease (see `ExpiringLease`)."""
        if self._held is not None:
            self._held.attach(pid)

    def lose(self, reason: str) -> None:
        """Mark the lease lost (called by the lease itself, or by a wrapping lease such as Ray's)."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
            callbacks = list(self._callbacks)
        for cb in callbacks:
            with contextlib.suppress(Exception):
                cb(reason)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` as soon as the lease is found lost (from another thread)."""
        with self._lock:
            self._callbacks.append(callback)
            reason = self._reason
        if reason is not None:
            callback(reason)

    def add_check(self, confirm: Callable[[], None]) -> None:
        """Run `confirm()` in `check` (a wrapping lease confirms its own hold; it calls `lose` if not)."""
        self._checks.append(confirm)

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease has held without a break until now."""
        for confirm in self._checks:
            confirm()
        if self._held is not None:
            try:
                self._held.check()
            except LeaseLost as err:
                self.lose(str(err))
        if self._reason is not None:
            raise LeaseLost(f"device '{self.device}': {self._reason}")


class DeviceLease(abc.ABC):
    """Grants exclusive use of a named device; `acquire` blocks until the device is free."""

    @abc.abstractmethod
    def acquire(self, device_name: str, timeout: float | None = None) -> contextlib.AbstractContextManager[
            LeaseHandle]:
        """Context manager holding the lease on `device_name` for the duration of the block.

        `timeout` is the most seconds to wait (None: wait for ever); on expiry `LeaseTimeout` is raised.
        """


def safe_name(name: str) -> str:
    """A file name for a device or lock name (anything outside [A-Za-z0-9._@-] becomes '_')."""
    out = re.sub(r"[^A-Za-z0-9._@-]", "_", name)
    if not out or out.startswith("."):
        out = "_" + out
    return out


class FileLease(DeviceLease):
    """A lease per device in ``<lock_dir>/<device>.lease/``; exclusive across processes and
    threads of one machine (see the module docstring)."""

    def __init__(self, lock_dir: Path | str | None = None, poll_interval_s: float = 0.005,
                 ttl_s: float | None = None) -> None:
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir is not None else default_lock_dir()
        self.poll_interval_s = poll_interval_s
        self.ttl_s = ttl_s

    def lease(self, device_name: str) -> ExpiringLease:
        """The expiring lease behind `device_name`."""
        return ExpiringLease(self.lock_dir, safe_name(device_name), self.ttl_s, poll_s=self.poll_interval_s,
                             label=f"device '{device_name}'")

    def holder(self, device_name: str) -> dict[str, Any] | None:
        """Who holds, or last held, the lease on `device_name` (pid, host, since), if recorded."""
        return self.lease(device_name).holder()

    @contextlib.contextmanager
    def acquire(self, device_name: str, timeout: float | None = None) -> Iterator[LeaseHandle]:
        """Hold the lease on `device_name` for the block; raise `LeaseTimeout` after `timeout` s."""
        held = self.lease(device_name).acquire(timeout)
        try:
            yield LeaseHandle(device_name, held.wait_s, held.acquired_at, held)
        finally:
            held.release()
