"""Exclusive device leases: two measurements never overlap on one device.

A measurement holds a lease on its device for as long as it runs, whatever else runs around it
(parallel trials, a CI check, a second `edge-search measure`). `DeviceLease` is the seam; the
implementation here, `FileLease`, is an OS file lock (``flock``) in a lock folder shared by all
processes on one machine. A distributed lease (Redis, a database row, the board agent's own
queue) can replace it by implementing `acquire`.

The lock folder is ``~/.cache/edge-search/locks`` unless the environment variable
``EDGE_SEARCH_LOCK_DIR`` names another one (tests and CI use that to keep runs apart).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

from edge_search.errors import EdgeSearchError

LOCK_DIR_ENV = "EDGE_SEARCH_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("~/.cache/edge-search/locks")


class LeaseTimeout(EdgeSearchError):
    """The device stayed busy for longer than the caller was willing to wait."""


@dataclass(frozen=True)
class LeaseHandle:
    """A held lease: which device, how long the caller waited, and when it got it."""

    device: str
    wait_s: float
    """Seconds spent waiting for the lease (0 when the device was free)."""
    acquired_at: float
    """Wall-clock time (``time.time()``) at which the lease was granted."""


class DeviceLease(abc.ABC):
    """Grants exclusive use of a named device; `acquire` blocks until the device is free."""

    @abc.abstractmethod
    def acquire(self, device_name: str, timeout: float | None = None) -> contextlib.AbstractContextManager[
            LeaseHandle]:
        """Context manager holding the lease on `device_name` for the duration of the block.

        `timeout` is the most seconds to wait (None: wait for ever); on expiry `LeaseTimeout` is raised.
        """


def default_lock_dir() -> Path:
    """The lock folder: ``$EDGE_SEARCH_LOCK_DIR`` or ``~/.cache/edge-search/locks``."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_LOCK_DIR.expanduser()


def _safe_name(device_name: str) -> str:
    """A file name for a device name (anything outside [A-Za-z0-9._@-] becomes '_')."""
    name = re.sub(r"[^A-Za-z0-9._@-]", "_", device_name)
    if not name or name.startswith("."):
        name = "_" + name
    return name


class FileLease(DeviceLease):
    """A lease backed by an ``flock`` on ``<lock_dir>/<device>.lock``; exclusive across processes.

    The kernel drops the lock when the holding process dies, so a crashed measurement never leaves
    a device locked. Next to the lock, ``<device>.holder`` records who holds it (pid, host, since),
    which the timeout message quotes. Locks taken through different `FileLease` objects, threads or
    processes on one machine all exclude each other.
    """

    def __init__(self, lock_dir: Path | str | None = None, poll_interval_s: float = 0.005) -> None:
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir is not None else default_lock_dir()
        self.poll_interval_s = poll_interval_s

    def lock_path(self, device_name: str) -> Path:
        """Path of the lock file for `device_name`."""
        return self.lock_dir / f"{_safe_name(device_name)}.lock"

    def _holder_path(self, device_name: str) -> Path:
        return self.lock_dir / f"{_safe_name(device_name)}.holder"

    def holder(self, device_name: str) -> dict[str, object] | None:
        """Who last took the lease on `device_name` (pid, host, since), if recorded."""
        try:
            data = json.loads(self._holder_path(device_name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @contextlib.contextmanager
    def acquire(self, device_name: str, timeout: float | None = None) -> Iterator[LeaseHandle]:
        """Hold the lease on `device_name` for the block; raise `LeaseTimeout` after `timeout` s."""
        try:
            self.lock_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgeSearchError(f"cannot create lock folder {self.lock_dir}: {err.strerror}") from None
        # thread_local=False: the lock belongs to this object, whichever thread releases it.
        lock = filelock.FileLock(str(self.lock_path(device_name)), thread_local=False,
                                 poll_interval=self.poll_interval_s)
        t0 = time.monotonic()
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except filelock.Timeout:
            who = self.holder(device_name)
            by = f" (held by pid {who.get('pid')} on {who.get('host')})" if who else ""
            raise LeaseTimeout(f"device '{device_name}' is busy: no lease within {timeout:g} s{by}") from None
        try:
            handle = LeaseHandle(device=device_name, wait_s=time.monotonic() - t0, acquired_at=time.time())
            with contextlib.suppress(OSError):
                self._holder_path(device_name).write_text(json.dumps(
                    {"pid": os.getpid(), "host": socket.gethostname(), "since": handle.acquired_at}))
            yield handle
        finally:
            lock.release()
