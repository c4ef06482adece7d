"""FileLease: exclusive across processes, records waits, times out, survives a killed or frozen holder."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_search.devices.lease import FileLease, LeaseLost, LeaseTimeout, default_lock_dir

HOLDER = """
import json, sys, time
from edge_search.devices.lease import FileLease
lock_dir, device, rounds, hold_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lease = FileLease(lock_dir)
out = []
for _ in range(rounds):
    with lease.acquire(device, timeout=60) as h:
        start = time.time()
        time.sleep(hold_s)
        out.append({"start": start, "end": time.time(), "wait": h.wait_s, "acquired_at": h.acquired_at})
print(json.dumps(out))
"""


def _spawn(lock_dir: Path, device: str, rounds: int, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), device, str(rounds), str(hold_s)],
                            stdout=subprocess.PIPE, text=True)


def test_processes_holding_one_device_never_overlap(tmp_path: Path) -> None:
    procs = [_spawn(tmp_path, "board-1", rounds=6, hold_s=0.03) for _ in range(3)]
    intervals = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        intervals += json.loads(out)
    assert len(intervals) == 18
    intervals.sort(key=lambda r: r["start"])
    for a, b in itertools.pairwise(intervals):
        assert a["end"] <= b["start"], f"overlap: {a} and {b}"
    assert all(r["acquired_at"] <= r["start"] for r in intervals)
    # With three processes contending for 18 x 30 ms, somebody must have waited.
    assert sum(r["wait"] for r in intervals) > 0.05


def test_different_devices_do_not_block_each_other(tmp_path: Path) -> None:
    lease = FileLease(tmp_path)
    with lease.acquire("a", timeout=1) as ha, lease.acquire("b", timeout=0) as hb:  # one try: free
        assert ha.device == "a" and hb.device == "b"


def test_timeout_names_the_holder(tmp_path: Path) -> None:
    holder = _spawn(tmp_path, "busy", rounds=1, hold_s=1.5)
    lease = FileLease(tmp_path)
    deadline = time.time() + 20
    while lease.holder("busy") is None and time.time() < deadline:  # wait until the child holds it
        time.sleep(0.02)
    t0 = time.monotonic()
    with pytest.raises(LeaseTimeout, match=rf"busy.*pid {holder.pid}"), lease.acquire("busy", timeout=0.3):
        pass
    assert 0.25 < time.monotonic() - t0 < 2.5
    with lease.acquire("busy", timeout=30) as h:  # then it is granted once the holder lets go
        assert h.wait_s > 0.1
    holder.communicate(timeout=30)


def test_in_process_leases_exclude_each_other(tmp_path: Path) -> None:
    a, b = FileLease(tmp_path), FileLease(tmp_path)
    with a.acquire("dev", timeout=1), pytest.raises(LeaseTimeout), b.acquire("dev", timeout=0.1):
        pass
    with b.acquire("dev", timeout=0) as h:  # released when a's block ended: one try succeeds
        assert h.device == "dev"


def test_killed_holder_releases_the_lease(tmp_path: Path) -> None:
    holder = _spawn(tmp_path, "dev", rounds=1, hold_s=60.0)
    lease = FileLease(tmp_path)
    deadline = time.time() + 20
    while lease.holder("dev") is None and time.time() < deadline:
        time.sleep(0.02)
    with pytest.raises(LeaseTimeout), lease.acquire("dev", timeout=0):  # held: one try fails
        pass
    holder.kill()
    holder.wait(timeout=10)
    with lease.acquire("dev", timeout=0) as h:  # released with the process: one try, no waiting
        assert h.device == "dev"


def test_lock_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    assert default_lock_dir() == tmp_path / "locks"
    lease = FileLease()
    with lease.acquire("odd/name with spaces", timeout=1):
        files = os.listdir(tmp_path / "locks")
    assert files == ["odd_name_with_spaces.lease"]  # one folder of epoch records per device
    monkeypatch.delenv("EDGE_SEARCH_LOCK_DIR")
    assert default_lock_dir() == Path("~/.cache/edge-search/locks").expanduser()


def test_frozen_holder_loses_the_lease_and_finds_out(tmp_path: Path) -> None:
    """A SIGSTOPped holder keeps no device for ever (an flock would): after the ttl the device is
    free again, and the holder, once continued, is told its lease was lost."""
    code = """
import sys, time
from edge_search.devices.lease import FileLease, LeaseLost
with FileLease(sys.argv[1], ttl_s=1.0).acquire("dev") as h:
    print("held", flush=True)
    time.sleep(3)
    try:
        h.check()
        print("kept", flush=True)
    except LeaseLost as err:
        print("lost:", err, flush=True)
"""
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        with FileLease(tmp_path, ttl_s=1.0).acquire("dev", timeout=10) as h:
            assert 0.5 < h.wait_s < 5
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    out = holder.communicate(timeout=30)[0]
    assert out.startswith("lost: device 'dev': lease lost"), out


def test_handle_check_and_callbacks(tmp_path: Path) -> None:
    lease = FileLease(tmp_path, ttl_s=5.0)
    with lease.acquire("dev") as h:
        h.check()  # held: nothing to say
        seen: list[str] = []
        h.on_lost(seen.append)
        h.lose("the Ray lease lapsed")  # a wrapping lease (Ray's) reports its own loss
        assert seen == ["the Ray lease lapsed"]
        with pytest.raises(LeaseLost, match="device 'dev': the Ray lease lapsed"):
            h.check()
        assert h.guard is not None and h.guard.holds()  # the file lease itself still holds
