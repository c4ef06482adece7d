"""Recovery with Optuna's heartbeats on real storages: stale trials failed and redone, exact counts.

Each storage test runs on SQLite and, when a server answers, on PostgreSQL (see `storage_url`).
Processes here are small Python scripts around the real storage and `edge_search.recovery` (no
training): the end-to-end versions with `edge-search run` are in test_run.py and test_chaos.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from edge_search.heartbeat import HeartbeatSettings
from edge_search.recovery import (
    MAX_RETRY,
    Owner,
    Sweeper,
    TrialHeartbeat,
    ask,
    is_surplus,
    was_taken_over,
    yield_surplus,
)
from edge_search.study import make_storage
from tests.conftest import postgres_url

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

FAST = HeartbeatSettings(interval_s=1, grace_s=3)

WORKER = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import optuna
from edge_search.heartbeat import HeartbeatSettings
from edge_search.recovery import TrialHeartbeat, was_taken_over
from edge_search.study import make_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
url, name, work_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
settings = HeartbeatSettings(1, 3)
study = optuna.load_study(study_name=name, storage=make_storage(url, settings))
trial = study.ask()
x = trial.suggest_float("x", 0, 1)
with TrialHeartbeat(study, trial._trial_id, settings):
    print(json.dumps({"number": trial.number}), flush=True)
    time.sleep(work_s)
    try:
        study.tell(trial, x)
        print(json.dumps({"told": True}), flush=True)
    except Exception as err:
        print(json.dumps({"told": False, "taken_over": was_taken_over(study, trial._trial_id),
                          "error": type(err).__name__}), flush=True)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A storage URL of each kind; PostgreSQL is skipped without a server unless CI requires it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
    else:
        yield postgres_url()


def _study(url: str, settings: HeartbeatSettings | None = FAST) -> optuna.Study:
    return optuna.create_study(study_name=f"rec-{uuid.uuid4().hex[:8]}", storage=make_storage(url, settings))


def _spawn(url: str, name: str, work_s: float) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, url, name, str(work_s)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    number = json.loads(proc.stdout.readline())["number"]
    return proc, int(number)


def _wait(predicate, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def test_frozen_process_trial_is_failed_then_redone_and_the_zombie_lets_go(storage_url: str) -> None:
    study = _study(storage_url)
    proc, number = _spawn(storage_url, study.study_name, work_s=8.0)
    try:
        time.sleep(1.5)  # a couple of heartbeats recorded
        os.kill(proc.pid, signal.SIGSTOP)
        sweeper = Sweeper(study, FAST)
        redone: list[int] = []

        def swept() -> bool:
            redone.extend(r.number for r in sweeper.sweep())
            return bool(redone)

        waited = _wait(swept, 20, "the frozen trial was not failed")
        assert FAST.grace_s - 1.5 <= waited <= FAST.grace_s + 3  # after the grace period, not before
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out = [json.loads(line) for line in proc.communicate(timeout=60)[0].splitlines()]
    trials = study.get_trials()
    failed, retry = trials[number], trials[-1]
    assert redone == [number] and failed.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert retry.user_attrs == {"retry_of": number, "retry_reason": retry.user_attrs["retry_reason"]}
    assert "heartbeats" in retry.user_attrs["retry_reason"]
    assert retry.system_attrs["failed_trial"] == number  # Optuna's own retry bookkeeping
    # the resumed process cannot complete the trial it lost, and knows why
    assert out == [{"told": False, "taken_over": True, "error": "ValueError"}]
    # the retry is what the next ask gets: same parameters
    again = ask(study)
    assert again.number == retry.number and again.suggest_float("x", 0, 1) == failed.params["x"]


def test_live_trial_is_not_failed_and_a_sigkilled_one_is(storage_url: str) -> None:
    study = _study(storage_url)
    alive, alive_n = _spawn(storage_url, study.study_name, work_s=8.0)
    dead, dead_n = _spawn(storage_url, study.study_name, work_s=60.0)
    dead.kill()
    dead.wait()
    sweeper = Sweeper(study, FAST)
    # the dead process was on this machine: failed at once, no grace period to wait
    assert [r.number for r in sweeper.sweep()] == [dead_n]
    time.sleep(FAST.grace_s + 2)
    assert sweeper.sweep() == []  # the live one keeps beating
    assert [json.loads(x) for x in alive.communicate(timeout=30)[0].splitlines()] == [{"told": True}]
    assert study.get_trials()[alive_n].state == TrialState.COMPLETE


def test_trial_without_owner_or_heartbeat_is_redone_after_the_grace_period(storage_url: str) -> None:
    study = _study(storage_url)
    t = ask(study)  # a process that died right after `ask`: no heartbeat, no owner
    t.suggest_int("k", 0, 9)
    sweeper = Sweeper(study, FAST)
    assert sweeper.sweep() == []
    time.sleep(FAST.grace_s + 0.5)
    assert [r.number for r in sweeper.sweep()] == [t.number]
    assert Sweeper(study, FAST, observe_unowned=False).sweep() == []  # the Ray driver's sweeper skips them


def test_other_hosts_are_judged_by_heartbeats_only(storage_url: str) -> None:
    study = _study(storage_url)
    t = ask(study)
    t.suggest_int("k", 0, 9)
    with TrialHeartbeat(study, t._trial_id, FAST):
        pass  # one beat and an owner, then silence
    study._storage.set_trial_user_attr(t._trial_id, "owner", {"host": "elsewhere", "pid": 1, "started": 0.0})
    assert not Owner("elsewhere", 1, 0.0).dead_here()
    sweeper = Sweeper(study, FAST)
    assert sweeper.sweep() == []
    time.sleep(FAST.grace_s + 1.5)
    assert [r.number for r in sweeper.sweep()] == [t.number]


def test_a_configuration_that_keeps_dying_is_redone_at_most_max_retry_times(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 's.db'}")
    sweeper = Sweeper(study, FAST)
    for _ in range(MAX_RETRY + 1):
        t = ask(study)
        t.suggest_int("k", 0, 9)
        study._storage.set_trial_user_attr(t._trial_id, "owner", {"host": Owner.me().host, "pid": 0, "started": 0.0})
        [r] = sweeper.sweep()
    assert not r.requeued and "not redone" in r.summary()
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert len({t.params["k"] for t in study.get_trials()}) == 1


def test_surplus_trial_yields_and_a_popped_retry_goes_back(tmp_path: Path) -> None:
    study = _study(f"sqlite:///{tmp_path / 's.db'}")
    done = ask(study)
    study.tell(done, done.suggest_float("x", 0, 1))
    a, b = ask(study), ask(study)  # two processes asked for the last slot of a 2-trial study at once
    assert not is_surplus(study, a.number, 2) and is_surplus(study, b.number, 2)
    # a redo popped from the queue goes back to it (same parameters, same retry bookkeeping)
    study._storage.set_trial_user_attr(a._trial_id, "owner", {"host": Owner.me().host, "pid": 0, "started": 0.0})
    a.suggest_float("x", 0, 1)
    assert len(Sweeper(study, FAST).sweep()) == 1
    c = ask(study)
    assert c.params == study.get_trials()[a.number].params and is_surplus(study, c.number, 2)
    yield_surplus(study, c)
    frozen = study.get_trials()
    assert frozen[c.number].state == TrialState.FAIL and frozen[c.number].user_attrs["surplus"] is True
    [back] = study.get_trials(states=(TrialState.WAITING,))
    assert back.params == c.params and back.user_attrs["retry_of"] == a.number
    assert back.system_attrs["failed_trial"] == a.number
    # and so does a configuration queued with enqueue_trial
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 7})
    yield_surplus(study, ask(study))  # pops `back` first (the older one) ...
    d = ask(study)
    yield_surplus(study, d)  # ... then the enqueued one
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs.get("fixed_params", t.params)["x"] for t in queued) == sorted(
        [0.25, back.params["x"]])


POP = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import optuna
from edge_search.study import make_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name=sys.argv[2], storage=make_storage(sys.argv[1]))
got = []
while (tid := study._pop_waiting_trial_id()) is not None:
    got.append(tid)
print(json.dumps(got))
"""


def test_sqlite_trial_queue_is_atomic_across_processes(tmp_path: Path) -> None:
    """pysqlite defers BEGIN to the first write, so Optuna's check-then-set is not atomic on plain
    SQLite (4 processes popped 330 of 300 queued trials); `make_storage` begins IMMEDIATE."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    study = _study(url, settings=None)
    for i in range(40):
        study.enqueue_trial({"x": i / 40}, skip_if_exists=False)
    procs = [subprocess.Popen([sys.executable, "-c", POP, url, study.study_name], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    popped = [tid for p in procs for tid in json.loads(p.communicate(timeout=240)[0])]
    assert sorted(popped) == sorted(t._trial_id for t in study.get_trials())


def test_postgres_sessions_of_a_frozen_client_end_after_the_grace_period() -> None:
    url = postgres_url()
    storage = make_storage(url, FAST)
    with storage.engine.connect() as conn:  # type: ignore[attr-defined]
        timeout = conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
    assert timeout == f"{FAST.grace_s}s"
    study = optuna.create_study(study_name=f"lock-{uuid.uuid4().hex[:8]}", storage=storage)
    t = ask(study)
    holder = subprocess.Popen([sys.executable, "-c", r"""
import sys, time, sqlalchemy
from edge_search.heartbeat import HeartbeatSettings
from edge_search.study import make_storage
storage = make_storage(sys.argv[1], HeartbeatSettings(1, 3))
conn = storage.engine.connect()
conn.exec_driver_sql("BEGIN")
conn.exec_driver_sql("SELECT * FROM trials WHERE trial_id = %s FOR UPDATE" % int(sys.argv[2]))
print("locked", flush=True)
time.sleep(60)
""", url, str(t._trial_id)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)  # frozen inside its transaction, holding the row lock
        t0 = time.monotonic()
        assert study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        assert time.monotonic() - t0 < FAST.grace_s + 5  # the server ended the frozen session
    finally:
        holder.kill()
        holder.wait()


def test_heartbeat_survives_storage_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = _study(f"sqlite:///{tmp_path / 's.db'}")
    t = ask(study)
    calls = []

    def broken(trial_id: int) -> None:
        calls.append(trial_id)
        raise RuntimeError("database went away")

    caplog.set_level(logging.WARNING, logger="edge_search.recovery")  # whatever earlier tests did to the root
    with TrialHeartbeat(study, t._trial_id, HeartbeatSettings(1, 2)) as hb:
        hb.storage = type("S", (), {"record_heartbeat": staticmethod(broken)})()
        deadline = time.monotonic() + 20  # a loaded machine may run the beat late; it must still beat on
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert len(calls) >= 2 and "not recorded" in caplog.text
    assert not was_taken_over(study, t._trial_id)


def test_settings_are_checked() -> None:
    from edge_search.errors import InputError

    with pytest.raises(InputError, match="at least 1 second"):
        HeartbeatSettings(0, 10)
    with pytest.raises(InputError, match="at least twice"):
        HeartbeatSettings(10, 15)
