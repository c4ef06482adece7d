"""The chaos soak, short: two `edge-search run` workers and two loopback agents on one PostgreSQL
study, one fault of each kind injected where it bites (benchmarks/chaos_soak.py is the long,
random version: 100 trials, a fault every 10-30 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_search.testing.chaos import ChaosSoak, ScriptedSchedule, SoakConfig, Step, soak_databases

pytestmark = pytest.mark.slow


def test_soak_with_one_fault_of_each_kind(tmp_path: Path, postgres: str) -> None:
    n = 10
    with soak_databases(postgres) as (storage, tracking):
        cfg = SoakConfig(root=tmp_path, storage=storage, tracking_uri=tracking, trials=n, heartbeat_interval=1,
                         grace_period=5, lease_ttl_s=2.0, max_wall_s=480)
        schedule = ScriptedSchedule([
            # A worker frozen mid-trial (whole process group) past the grace period: the other worker
            # fails its trial and redoes it while it is still frozen; continued, it drops its result.
            Step("worker0", "stop", True, lambda s: bool(s.held_by("worker0")) and s.n_complete() >= 1,
                 pause_s=90, until=lambda s: all(s.redo_started(n, s.trials()) for n in s.faults[-1].held_trials)),
            # An agent killed while it measures: the request goes to the other agent; restarted.
            Step("agent0", "kill", True, lambda s: s.agent_busy("agent0"), pause_s=2),
            # An agent frozen while it measures, its measuring worker left running: the device lease
            # lapses, that worker stops itself, the other agent measures, nothing overlaps.
            Step("agent1", "stop", False, lambda s: s.agent_busy("agent1"), pause_s=3 * cfg.lease_ttl_s),
            # A worker killed mid-trial (main process only): its trial is redone with the same parameters.
            Step("worker1", "kill", False, lambda s: bool(s.held_by("worker1")), pause_s=2),
        ])
        with ChaosSoak(cfg, schedule) as soak:
            soak.run()
            figures = soak.figures()
            print(json.dumps(figures, indent=1))  # shown with -s, and in the log of a failure
            assert not schedule.pending, f"faults never injected: {[s.target for s in schedule.pending]}"
            assert soak.check(n) == []
            assert figures["unexpected_exits"] == {}
            assert len(soak.redo_s) == 1 and soak.redo_s[0] < cfg.grace_period + 30  # redone while frozen
            assert soak.redo_s[0] >= cfg.grace_period - 2  # and not before the grace period
            # the frozen worker's and the killed worker's trials were queued again with their parameters
            # (the second redo may be left queued: the other worker can finish the study first)
            assert figures["retries_queued"] >= 2 and figures["trials_redone"] >= 1
            resumed = soak.resume(extra=2)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            assert soak.check(n + 2) == []
