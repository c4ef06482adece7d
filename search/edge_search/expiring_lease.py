"""Expiring leases on one machine: exclusive while the holder renews them, lost when it stops.

An OS lock (``flock``, SQLite's file lock) is released when its process dies, but a *frozen*
process (SIGSTOP, a debugger, a suspended VM) holds it for ever. A lease here is never a held lock:
it is a record with an expiry that its holder renews from a thread every ``ttl / 4`` seconds. A
holder that stops renewing (dead or frozen) loses the lease ``ttl`` seconds later; one that finds,
when it renews, that its own lease has lapsed treats it as lost and never renews it back.

Layout: a lease named N in folder D is the folder ``D/N.lease`` of *epoch* records
``000000000007`` (JSON: holder pid and start time, host, boot id, expiry on the boot clock and the
wall clock, attached worker pids, released flag). The highest epoch is the current one.

- **acquire**: read the highest epoch E; when it is released, expired (plus a margin), or its
  holder and every attached worker are dead (same machine, same boot), create E+1 with ``os.link``,
  which fails if the name exists, so of several contenders exactly one wins. Then re-read E: if its
  holder renewed in the meantime, the claim is voided (written released) and acquiring starts over.
- **renew**: if the holder's own clock is past its expiry, the lease is lost; else E is rewritten
  (``os.replace``) with a new expiry, and if any epoch above E exists the lease is lost.
- **check**: *no epoch above E exists now* means nobody else held the lease since E was created;
  so a result produced under the lease is trustworthy only if `HeldLease.check` passes *after* it
  was produced. A child process that uses the resource gets the lease's `guard` and exits as soon
  as the guard fails (`watch_guard`), before anyone else can take the lease (who waits for the
  expiry plus a margin).

Why not a library: ``filelock``/``portalocker`` are OS locks (held by a frozen process for ever);
distributed lock services (Redis, etcd) are servers the measuring machine may not have.
Times use ``CLOCK_BOOTTIME`` (Linux: one clock for every process, not moved by NTP, counting
suspend); records from another boot or host fall back to the wall clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from edge_search.errors import EdgeSearchError

LOCK_DIR_ENV = "EDGE_SEARCH_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("~/.cache/edge-search/locks")
TTL_ENV = "EDGE_SEARCH_LEASE_TTL"
DEFAULT_TTL_S = 10.0
GUARD_ENV = "EDGE_SEARCH_LEASE_GUARD"
LEASE_LOST_EXIT = 75
"""Exit status of a child whose guard failed (EX_TEMPFAIL)."""


class LeaseTimeout(EdgeSearchError):
    """The lease stayed taken for longer than the caller was willing to wait."""


class LeaseLost(EdgeSearchError):
    """The lease lapsed or was taken over while held: what was done under it may have overlapped."""


def lease_clock() -> float:
    """Seconds on a clock every process of this machine shares (boot clock where there is one)."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock_id) if clock_id is not None else time.monotonic()


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


BOOT_ID = _boot_id()
HOST = socket.gethostname()


def default_lock_dir() -> Path:
    """The lock folder shared by this machine's processes: ``$EDGE_SEARCH_LOCK_DIR`` or
    ``~/.cache/edge-search/locks``."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_LOCK_DIR.expanduser()


def machine_lease(kind: str, key: str, label: str) -> ExpiringLease:
    """A lease on this machine serialising one kind of step on one resource named by `key`
    (e.g. ``("mlflow-open", tracking_uri)``); the key is hashed into the lease's name."""
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return ExpiringLease(default_lock_dir(), f"{kind}-{digest}", label=label)


def default_ttl() -> float:
    """``$EDGE_SEARCH_LEASE_TTL`` seconds, else 10."""
    try:
        ttl = float(os.environ.get(TTL_ENV, DEFAULT_TTL_S))
    except ValueError:
        raise EdgeSearchError(f"${TTL_ENV} must be a number of seconds") from None
    if ttl <= 0:
        raise EdgeSearchError(f"${TTL_ENV} must be positive")
    return ttl


def _started(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int, started: float | None) -> bool:
    now = _started(pid)
    return now is not None and (started is None or abs(now - started) < 1.0)


@dataclass(frozen=True)
class LeaseGuard:
    """What a child process needs to check that its parent's lease still holds (JSON-able)."""

    folder: str
    epoch: int
    token: str

    def to_env(self) -> str:
        return json.dumps({"folder": self.folder, "epoch": self.epoch, "token": self.token})

    @classmethod
    def from_env(cls, text: str) -> LeaseGuard:
        data = json.loads(text)
        return cls(str(data["folder"]), int(data["epoch"]), str(data["token"]))

    def holds(self) -> bool:
        """True while the epoch is the newest, ours, not released and not past its expiry."""
        folder = Path(self.folder)
        try:
            names = os.listdir(folder)
            record = json.loads((folder / _name(self.epoch)).read_text())
        except (OSError, ValueError):
            return False
        if any(n.isdigit() and int(n) > self.epoch for n in names):
            return False
        return (record.get("token") == self.token and not record.get("released")
                and not _expired(record, margin_s=0.0))


def _name(epoch: int) -> str:
    return f"{epoch:012d}"


def _expired(record: dict[str, Any], margin_s: float) -> bool:
    if record.get("boot_id") == BOOT_ID and record.get("host") == HOST:
        return lease_clock() > float(record["expires_boot"]) + margin_s
    return time.time() > float(record["expires_wall"]) + margin_s


class ExpiringLease:
    """One named lease in `folder` (see the module docstring); `acquire` returns a `HeldLease`."""

    def __init__(self, folder: Path | str, name: str, ttl_s: float | None = None, poll_s: float = 0.01,
                 label: str | None = None) -> None:
        """`name` must be a plain file name; `label` names the lease in messages (default: its name)."""
        self.folder = Path(folder) / f"{name}.lease"
        self.name = name
        self.label = label or f"'{name}'"
        self.ttl_s = ttl_s if ttl_s is not None else default_ttl()
        self.poll_s = poll_s
        self.margin_s = max(0.5, 0.1 * self.ttl_s)
        """A taker waits this long past the expiry: time for a holder's child to notice and stop."""

    # -- records ----------------------------------------------------------------------------------

    def epochs(self) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self.folder) if n.isdigit())
        except FileNotFoundError:
            return []

    def read(self, epoch: int) -> dict[str, Any] | None:
        try:
            data = json.loads((self.folder / _name(epoch)).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, epoch: int, record: dict[str, Any], *, create: bool) -> bool:
        """Write a whole record atomically; with `create`, only if the epoch does not exist yet."""
        tmp = self.folder / f".{_name(epoch)}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(record))
        try:
            if create:
                try:
                    os.link(tmp, self.folder / _name(epoch))
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, self.folder / _name(epoch))
            return True
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def free(self, record: dict[str, Any] | None) -> bool:
        """Whether a current record can be taken over: released, expired, or its processes are gone."""
        if record is None or record.get("released"):
            return True
        if _expired(record, self.margin_s):
            return True
        if record.get("boot_id") != BOOT_ID or record.get("host") != HOST:
            return False
        pids = [(int(record["pid"]), record.get("pid_started"))]
        pids += [(int(p), s) for p, s in record.get("workers", [])]
        return not any(_alive(p, s) for p, s in pids)

    def holder(self) -> dict[str, Any] | None:
        """The current record (who holds or last held the lease), if any."""
        epochs = self.epochs()
        return self.read(epochs[-1]) if epochs else None

    # -- acquiring --------------------------------------------------------------------------------

    def try_acquire(self) -> HeldLease | None:
        """Take the lease if it is free now; None if somebody holds it."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EdgeSearchError(f"cannot create lease folder {self.folder}: {err.strerror}") from None
        while True:
            epochs = self.epochs()
            top = epochs[-1] if epochs else 0
            seen = self.read(top) if epochs else None
            if not self.free(seen):
                return None
            held = HeldLease(self, top + 1)
            if not self.write(top + 1, held.record(), create=True):
                continue  # somebody else took top + 1 first: look again
            again = self.read(top) if epochs else None
            if again is not None and again != seen and not self.free(again):
                held.void()  # its holder renewed between our look and our claim: it keeps it
                continue
            self._tidy(epochs[:-1])
            held.start()
            return held

    def acquire(self, timeout: float | None = None) -> HeldLease:
        """Wait for the lease (for ever when `timeout` is None); `LeaseTimeout` names the holder."""
        t0 = time.monotonic()
        delay = self.poll_s
        while True:
            held = self.try_acquire()
            if held is not None:
                held.wait_s = time.monotonic() - t0
                return held
            if timeout is not None and time.monotonic() - t0 >= timeout:
                who = self.holder() or {}
                by = f" (held by pid {who.get('pid')} on {who.get('host')})" if who else ""
                raise LeaseTimeout(f"{self.label} is busy: no lease within {timeout:g} s{by}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    @contextlib.contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[HeldLease]:
        """Context manager: the lease for the block, released after it."""
        held = self.acquire(timeout)
        try:
            yield held
        finally:
            held.release()

    def _tidy(self, old: list[int]) -> None:
        """Remove superseded epochs and temporary files left by killed writers."""
        for e in old:
            with contextlib.suppress(OSError):
                (self.folder / _name(e)).unlink()
        with contextlib.suppress(OSError):
            for p in self.folder.glob(".*"):
                with contextlib.suppress(OSError):
                    if time.time() - p.stat().st_mtime > 60:
                        p.unlink()


class HeldLease:
    """A lease this process holds: renewed from a daemon thread until `release`."""

    def __init__(self, lease: ExpiringLease, epoch: int) -> None:
        self.lease = lease
        self.epoch = epoch
        self.token = uuid.uuid4().hex
        self.expires = lease_clock() + lease.ttl_s
        self.acquired_at = time.time()
        self.wait_s = 0.0
        self.reason = ""
        self.lost = threading.Event()
        self._released = False
        self._workers: list[tuple[int, float | None]] = []
        self._callbacks: list[Callable[[str], None]] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"token": self.token, "pid": pid, "pid_started": _started(pid), "host": HOST, "boot_id": BOOT_ID,
                "expires_boot": self.expires, "expires_wall": time.time() + (self.expires - lease_clock()),
                "since": self.acquired_at, "released": self._released, "workers": self._workers}

    @property
    def guard(self) -> LeaseGuard:
        return LeaseGuard(str(self.lease.folder), self.epoch, self.token)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{self.lease.name}", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease.ttl_s / 4):
            self.renew()

    def renew(self) -> None:
        """Extend the expiry, or notice the lease is lost (lapsed while stalled, or taken)."""
        with self._lock:
            if self.lost.is_set() or self._released:
                return
            now = lease_clock()
            if now >= self.expires:
                self._lose(f"lease lost: not renewed for {now - self.expires + self.lease.ttl_s:.1f} s "
                           f"(ttl {self.lease.ttl_s:g} s; was this process stopped?)")
                return
            before, self.expires = self.expires, now + self.lease.ttl_s
            try:
                self.lease.write(self.epoch, self.record(), create=False)
            except OSError:  # not renewed: the lease lapses at the old expiry unless a later renew works
                self.expires = before
                return
            self._check_epochs()

    def _check_epochs(self) -> None:
        newer = [e for e in self.lease.epochs() if e > self.epoch]
        if newer:
            who = self.lease.read(newer[-1]) or {}
            self._lose(f"lease lost: taken over by pid {who.get('pid')} after it lapsed")

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.reason = reason
        self.lost.set()
        for cb in list(self._callbacks):
            with contextlib.suppress(Exception):
                cb(reason)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` (from the renewing thread) when the lease is found lost."""
        self._callbacks.append(callback)
        if self.lost.is_set():
            callback(self.reason)

    def attach(self, pid: int) -> None:
        """Record a worker process using the resource: the lease is not taken over as 'holder dead'
        while it lives (it stops itself through the guard once the lease expires)."""
        with self._lock:
            self._workers.append((pid, _started(pid)))
            if not self.lost.is_set():
                self.lease.write(self.epoch, self.record(), create=False)

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease has been ours without a break until now."""
        with self._lock:
            if not self.lost.is_set():
                if lease_clock() >= self.expires:
                    self._lose(f"lease lost: lapsed (ttl {self.lease.ttl_s:g} s; was this process stopped?)")
                else:
                    self._check_epochs()
        if self.lost.is_set():
            raise LeaseLost(self.reason)

    def void(self) -> None:
        """Give up a claim that was never used."""
        self._released = True
        self.lease.write(self.epoch, self.record(), create=False)

    def release(self) -> None:
        """Stop renewing and mark the lease released (unless it was lost: then it is not ours)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._released:
                return
            self._released = True
            if not self.lost.is_set() and not any(e > self.epoch for e in self.lease.epochs()):
                self.lease.write(self.epoch, self.record(), create=False)


def watch_guard(guard: LeaseGuard, interval_s: float = 0.1, exit_code: int = LEASE_LOST_EXIT) -> threading.Thread:
    """In a child process: exit (``os._exit``) as soon as the parent's lease no longer holds."""

    def watch() -> None:
        while guard.holds():
            time.sleep(interval_s)
        sys.stderr.write(f"edge-search: lease lost (epoch {guard.epoch} of {guard.folder}); stopping\n")
        sys.stderr.flush()
        os._exit(exit_code)

    thread = threading.Thread(target=watch, name="lease-guard", daemon=True)
    thread.start()
    return thread


def watch_guard_from_env() -> threading.Thread | None:
    """`watch_guard` for the guard in ``$EDGE_SEARCH_LEASE_GUARD``, if the parent set one."""
    text = os.environ.get(GUARD_ENV)
    return watch_guard(LeaseGuard.from_env(text)) if text else None
