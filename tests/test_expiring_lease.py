"""Expiring leases: exclusive across processes, lost by a frozen holder, taken at once from a dead one."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_search.expiring_lease import ExpiringLease, LeaseGuard, LeaseLost, LeaseTimeout, lease_clock

HOLDER = r"""
import json, os, sys, time
from edge_search.expiring_lease import ExpiringLease, LeaseLost
folder, ttl, hold_s, until = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
lease = ExpiringLease(folder, "dev", ttl_s=ttl)
while True:
    held = lease.acquire(timeout=120)
    start = time.time()
    print(json.dumps({"event": "acquired", "epoch": held.epoch}), flush=True)
    time.sleep(hold_s)
    end = time.time()
    try:
        held.check()
        ok = True
    except LeaseLost:
        ok = False
    held.release()
    print(json.dumps({"start": start, "end": end, "ok": ok, "pid": os.getpid()}), flush=True)
    if time.time() > until:
        break
"""


def _spawn(folder: Path, ttl: float, hold_s: float, run_s: float = 0.0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(ttl), str(hold_s),
                             str(time.time() + run_s)], stdout=subprocess.PIPE, text=True)


def _wait_acquired(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line)["event"] == "acquired", line


def _intervals(out: str) -> list[dict[str, float]]:
    return [r for r in map(json.loads, out.splitlines()) if "start" in r]


def test_holds_never_overlap_across_processes(tmp_path: Path) -> None:
    procs = [_spawn(tmp_path, ttl=2.0, hold_s=0.02, run_s=3.0) for _ in range(3)]
    spans = sorted((r for p in procs for r in _intervals(p.communicate(timeout=60)[0])), key=lambda r: r["start"])
    assert all(p.returncode == 0 for p in procs)
    assert len({r["pid"] for r in spans}) == 3 and len(spans) >= 30
    assert all(r["ok"] for r in spans)
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(spans))
    assert len(list((tmp_path / "dev.lease").iterdir())) <= 3  # superseded epochs are removed


def test_frozen_holder_loses_the_lease_after_the_ttl(tmp_path: Path) -> None:
    holder = _spawn(tmp_path, ttl=1.0, hold_s=4.0)
    try:
        _wait_acquired(holder)
        os.kill(holder.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        lease = ExpiringLease(tmp_path, "dev", ttl_s=1.0)
        with lease.hold(timeout=20) as held:
            waited = time.monotonic() - t0
            assert held.epoch == 2
        assert 0.5 < waited < 1.0 + lease.margin_s + 1.0  # the ttl, plus the margin, not for ever
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    out = _intervals(holder.communicate(timeout=30)[0])
    assert [r["ok"] for r in out] == [False]  # resumed, it finds the lease was lost: its work is void


def test_killed_holder_is_replaced_at_once(tmp_path: Path) -> None:
    holder = _spawn(tmp_path, ttl=30.0, hold_s=60.0)
    _wait_acquired(holder)
    holder.kill()
    holder.wait(timeout=10)
    t0 = time.monotonic()
    with ExpiringLease(tmp_path, "dev", ttl_s=30.0).hold(timeout=5):
        assert time.monotonic() - t0 < 2.0  # dead pid on this machine: no need to wait 30 s


def test_attached_worker_keeps_the_lease_of_a_dead_holder(tmp_path: Path) -> None:
    lease = ExpiringLease(tmp_path, "dev", ttl_s=1.5)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        held = lease.acquire()
        held.attach(child.pid)
        held._stop.set()  # the holder "dies": no more renewals, but its worker still runs
        record = lease.holder()
        assert record is not None and record["workers"][0][0] == child.pid
        other = ExpiringLease(tmp_path, "dev", ttl_s=1.5)
        assert other.try_acquire() is None  # the worker lives: not free before the expiry
        t0 = time.monotonic()
        with other.hold(timeout=10):
            assert time.monotonic() - t0 > 0.5
        with pytest.raises(LeaseLost, match="lease lost"):
            held.check()
    finally:
        child.kill()
        child.wait()


def test_guard_fails_when_the_lease_is_lost(tmp_path: Path) -> None:
    lease = ExpiringLease(tmp_path, "dev", ttl_s=1.0)
    held = lease.acquire()
    guard = LeaseGuard.from_env(held.guard.to_env())
    assert guard.holds()
    held._stop.set()  # stop renewing, as a frozen parent would
    deadline = time.monotonic() + 5
    while guard.holds() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not guard.holds()
    assert lease_clock() >= held.expires


def test_child_watcher_exits_when_the_lease_goes(tmp_path: Path) -> None:
    lease = ExpiringLease(tmp_path, "dev", ttl_s=1.0)
    held = lease.acquire()
    code = ("from edge_search.expiring_lease import watch_guard_from_env; import time; "
            "watch_guard_from_env(); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "EDGE_SEARCH_LEASE_GUARD": held.guard.to_env()})
    time.sleep(1.5)
    assert child.poll() is None  # renewed: the child keeps going
    held._stop.set()
    t0 = time.monotonic()
    _, err = child.communicate(timeout=10)
    assert child.returncode == 75 and "lease lost" in err
    assert time.monotonic() - t0 < 2.0


def test_timeout_names_the_holder(tmp_path: Path) -> None:
    lease = ExpiringLease(tmp_path, "dev", ttl_s=5.0)
    with lease.hold():
        t0 = time.monotonic()
        with pytest.raises(LeaseTimeout, match=rf"'dev' is busy.*pid {os.getpid()}"):
            ExpiringLease(tmp_path, "dev").acquire(timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0


def test_random_stops_never_leave_two_valid_holders(tmp_path: Path) -> None:
    """Four holders, one of them stopped at random for 0.2-1 s again and again (ttl 0.4 s): holds
    that pass `check` afterwards never overlap; some holds are lost and reported so."""
    procs = [_spawn(tmp_path, ttl=0.4, hold_s=0.05, run_s=12.0) for _ in range(4)]
    rng = random.Random(7)
    stops = 0
    t_end = time.monotonic() + 10
    time.sleep(0.5)
    while time.monotonic() < t_end:
        p = rng.choice(procs)
        os.kill(p.pid, signal.SIGSTOP)
        stops += 1
        time.sleep(rng.uniform(0.2, 1.0))
        os.kill(p.pid, signal.SIGCONT)
        time.sleep(rng.uniform(0.05, 0.3))
    spans = [r for p in procs for r in _intervals(p.communicate(timeout=60)[0])]
    good = sorted((r for r in spans if r["ok"]), key=lambda r: r["start"])
    assert stops >= 10 and len(good) > 20
    assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(good))
    assert len(good) < len(spans)  # some holds were stopped past the ttl and reported lost
