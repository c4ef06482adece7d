"""Scale-out: several processes on one PostgreSQL-backed study, and the Ray Tune back-end."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import FAST_MEASURE, ray_missing, require

pytestmark = pytest.mark.slow

def _cmd(space: Path, study: str, storage: str, n: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge_search", "run", "--space", str(space), "--study", study,
            "--storage", storage, "--trials", str(n), "--sampler", "random", *FAST_MEASURE, *extra]


def _complete(study: str, storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE,))


def test_two_processes_share_a_postgres_study(workdir: Path, small_space: Path, postgres: str) -> None:
    study, n = f"pg-{uuid.uuid4().hex[:8]}", 6
    procs = [subprocess.Popen(_cmd(small_space, study, postgres, n, "--seed", str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=500)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name=study, storage=postgres).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == n  # exactly n: the processes wait rather than overshoot
    owners = {t.user_attrs["owner"]["pid"] for t in done}
    assert owners == {p.pid for p in procs}  # both did work
    assert len({t.number for t in done}) == n
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def test_killed_process_on_postgres_is_recovered(workdir: Path, small_space: Path, postgres: str) -> None:
    study, n = f"pgkill-{uuid.uuid4().hex[:8]}", 6
    victim = subprocess.Popen(_cmd(small_space, study, postgres, n), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 200
    try:
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                trials = optuna.load_study(study_name=study, storage=postgres).get_trials()
            except KeyError:
                continue
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and trials[-1].state == TrialState.RUNNING \
                    and "owner" in trials[-1].user_attrs:
                victim.send_signal(signal.SIGKILL)
                break
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
    other = subprocess.run(_cmd(small_space, study, postgres, n), capture_output=True, text=True, timeout=400)
    assert other.returncode == 0, other.stderr
    trials = optuna.load_study(study_name=study, storage=postgres).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    # the redo has the same parameters as far as the killed trial had sampled them (define-by-run: a
    # trial killed while training has no deploy parameters yet; the redo samples them afresh)
    redo = [t.params for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(redo) == 1 and {k: redo[0][k] for k in failed[0].params} == failed[0].params


def test_ray_worker_killed_mid_trial_loses_nothing(workdir: Path, small_space: Path) -> None:
    """One Ray worker SIGKILLed mid-trial, then another SIGSTOPped mid-trial: the driver fails the
    stopped worker's trial after the grace period, kills the worker (Tune gets its slot back) and
    the trial is redone with the same parameters; the study ends with exactly n finished trials."""
    require(ray_missing(), "EDGE_SEARCH_REQUIRE_RAY")
    n, storage, grace = 5, "sqlite:///edge-search.db", 4
    proc = subprocess.Popen(_cmd(small_space, "ray-kill", storage, n, "--backend", "ray", "--workers", "2",
                                 "--heartbeat-interval", "1", "--grace-period", str(grace)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = stopped = None
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None and stopped is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name="ray-kill", storage=storage).get_trials()
            except KeyError:
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if victim is None and sum(t.state == TrialState.COMPLETE for t in trials) >= 1 and running:
                victim = running[0]
                os.kill(victim.user_attrs["owner"]["pid"], signal.SIGKILL)  # the Ray worker process
            elif victim is not None:
                others = [t for t in running if t.number > victim.number
                          and t.user_attrs["owner"]["pid"] != victim.user_attrs["owner"]["pid"]]
                if others:
                    time.sleep(0.5)  # inside its training, not inside a database write
                    stopped = others[0]
                    os.kill(stopped.user_attrs["owner"]["pid"], signal.SIGSTOP)
        out = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped.user_attrs["owner"]["pid"], signal.SIGCONT)
    assert stopped is not None, "no second trial was seen running in a Ray worker"
    assert f"killed Ray worker pid {stopped.user_attrs['owner']['pid']}" in out
    trials_now = optuna.load_study(study_name="ray-kill", storage=storage).get_trials()
    assert trials_now[stopped.number].state == TrialState.FAIL
    assert [t.params for t in trials_now if t.user_attrs.get("retry_of") == stopped.number] == [stopped.params]
    assert victim is not None, "no trial was seen running in a Ray worker"
    assert proc.returncode == 0, out[-3000:]
    trials = optuna.load_study(study_name="ray-kill", storage=storage).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL  # told FAIL, not counted, not left RUNNING
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in done:  # recorded by the workers through the same StudySession as the embedded driver
        assert set(t.user_attrs["metrics"]) >= {"accuracy", "latency_ms", "size_mb"}
        assert t.values == [t.user_attrs["metrics"][k] for k in ("accuracy", "latency_ms", "size_mb")]
    pareto = subprocess.run([sys.executable, "-m", "edge_search", "pareto", "--study", "ray-kill", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert pareto.returncode == 0 and '"mlflow_run_id"' in pareto.stdout
    # measurements never overlapped: each holds the device lease (Ray actor + file lock) throughout
    spans = sorted({(t.user_attrs["latency"]["started_at"], t.user_attrs["latency"]["ended_at"]) for t in done})
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), spans
