"""Scale-out: several processes on one PostgreSQL-backed study, and the Ray Tune back-end."""

from __future__ import annotations

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

PG_URL = os.environ.get("EDGE_SEARCH_TEST_POSTGRES", "postgresql://edge:edge@127.0.0.1:5432/edge_search_test")


@pytest.fixture()
def postgres() -> str:
    """The test database URL; skipped with the reason when no server answers (CI starts one and
    sets EDGE_SEARCH_REQUIRE_POSTGRES=1, which turns the skip into a failure)."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as err:  # no driver or no server
        if os.environ.get("EDGE_SEARCH_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL at {PG_URL} ({type(err).__name__}); .ci/run installs and starts one")
    return PG_URL


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
    assert [t.params for t in trials if t.user_attrs.get("retry_of") == failed[0].number] == [failed[0].params]


def test_ray_worker_killed_mid_trial_loses_nothing(workdir: Path, small_space: Path) -> None:
    require(ray_missing(), "EDGE_SEARCH_REQUIRE_RAY")
    n, storage = 5, "sqlite:///edge-search.db"
    proc = subprocess.Popen(_cmd(small_space, "ray-kill", storage, n, "--backend", "ray", "--workers", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name="ray-kill", storage=storage).get_trials()
            except KeyError:
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and "owner" in t.user_attrs]
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 1 and running:
                victim = running[0]
                os.kill(victim.user_attrs["owner"]["pid"], signal.SIGKILL)  # the Ray worker process
                break
        out = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
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
