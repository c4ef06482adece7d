"""Trials that outlive their process: heartbeats, stale trials failed and redone, exact counts.

Several processes (on one machine or many) share a study through its RDB storage. Any of them may
die (SIGKILL, a lost machine) or freeze (SIGSTOP, a suspended VM) in the middle of a trial; the
trial must not stay RUNNING for ever, and it must be redone with the same parameters. Optuna's own
machinery does it, used here from an ask/tell loop:

- `TrialHeartbeat`: while a process evaluates a trial, a thread records the trial's heartbeat in
  the storage every ``interval`` seconds (``RDBStorage.record_heartbeat``; timestamps are the
  database server's clock, so hosts need not agree on the time). The first beat is recorded before
  anything else, because Optuna never considers a trial without a heartbeat stale.
- `Sweeper.sweep`, called before every ``ask`` and while waiting for other processes:
  ``optuna.storages.fail_stale_trials`` fails RUNNING trials whose last heartbeat is older than the
  grace period (a frozen process counts as dead then); trials owned by a dead process on this
  machine are failed at once; a RUNNING trial with neither owner nor heartbeat (its process died
  between ``ask`` and its first beat) is failed once this process has seen it so for a grace period.
- `RedoStaleTrial` (Optuna's ``RetryHeartbeatStaleTrialCallback``, which the storage calls for every
  trial ``fail_stale_trials`` failed): the trial's MLflow run is marked failed with the reason and a
  WAITING copy with the same parameters is enqueued (``retry_of`` user attribute, Optuna's
  ``failed_trial``/``retry_history`` system attributes), at most `MAX_RETRY` times per
  configuration, so a configuration that kills its process every time is not redone for ever.
- `is_surplus`: several processes asking at once for the last free slot would overshoot the target
  count; after ``ask`` a process yields its trial when complete trials plus running trials with a
  lower number already make the target.

A frozen process that resumes after its trial was redone (a *zombie*) finds out at its next write:
finished trials refuse attributes and ``tell`` (`was_taken_over`); the driver drops the trial
quietly. Its device lease has lapsed meanwhile as well (`edge_search.expiring_lease`).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from edge_search.heartbeat import HeartbeatSettings
from edge_search.records import TrialRecord

log = logging.getLogger(__name__)

MAX_RETRY = 3
"""A configuration is redone at most this many times after its process died or froze."""


@dataclass
class Owner:
    """Which process runs a trial (recorded on the trial as ``owner``)."""

    host: str
    pid: int
    started: float

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def dead_here(self) -> bool:
        """True only for a process of this machine that is gone; other hosts are judged by heartbeats."""
        if self.host != socket.gethostname():
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) >= 1.0
        except psutil.Error:
            return True


class RedoStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Fail a dead process's trial in MLflow too and enqueue it again with the same parameters.

    Optuna's callback copies the failed trial's user attributes into the retry; edge-search's
    (MLflow run id, owner, results of the dead attempt) must not follow it, so the retry gets only
    ``retry_of`` and ``retry_reason``. `mark_failed` is set by the study session once it has an
    MLflow tracker (a callback built with the storage has none yet).
    """

    def __init__(self, max_retry: int = MAX_RETRY) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.max_retry = max_retry
        self.mark_failed: Callable[[FrozenTrial, str], None] | None = None
        self.reason = "its process stopped sending heartbeats (dead or frozen past the grace period)"
        self.redone: list[Recovered] = []

    def __getstate__(self) -> dict[str, Any]:  # pickled with the storage (Ray): no tracker
        state = self.__dict__.copy()
        state["mark_failed"] = None
        return state

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.redo(study, trial, self.reason)

    def redo(self, study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
        if self.mark_failed is not None:
            try:
                self.mark_failed(trial, reason)
            except Exception as err:  # MLflow is the mirror: reconciled at the end, never fatal here
                log.warning("trial %d: could not mark its MLflow run failed: %s", trial.number, err)
        clean = copy.deepcopy(trial)
        clean.user_attrs = {TrialRecord.RETRY_OF: trial.number, TrialRecord.RETRY_REASON: reason}
        if not trial.params:  # nothing was sampled yet: nothing to redo
            self.redone.append(Recovered(trial.number, reason, trial.user_attrs.get(TrialRecord.OWNER), False))
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__call__(study, clean)
        # The parent queues the retry unless the configuration's retry history is already full.
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        requeued = len(history) <= self.max_retry
        self.redone.append(Recovered(trial.number, reason, trial.user_attrs.get(TrialRecord.OWNER), requeued))


def configure_storage(kwargs: dict[str, Any], settings: HeartbeatSettings | None) -> RedoStaleTrial | None:
    """Add the heartbeat arguments of ``RDBStorage`` to `kwargs`; returns the callback it will call."""
    if settings is None:
        return None
    callback = RedoStaleTrial()
    kwargs.update(heartbeat_interval=settings.interval_s, grace_period=settings.grace_s,
                  heartbeat_stale_trial_callback=callback)
    return callback


def stale_callback(study: optuna.Study) -> RedoStaleTrial | None:
    """The `RedoStaleTrial` the study's storage calls, if it has one."""
    get = getattr(study._storage, "get_heartbeat_stale_trial_callback", None)
    cb = get() if get is not None else None
    return cb if isinstance(cb, RedoStaleTrial) else None


class TrialHeartbeat:
    """Context manager around one trial's evaluation: first beat and ``owner`` at once, then a beat
    every interval from a daemon thread (a storage error is logged and retried at the next beat)."""

    def __init__(self, study: optuna.Study, trial_id: int, settings: HeartbeatSettings | None) -> None:
        self.study = study
        self.storage = study._storage
        self.trial_id = trial_id
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)  # type: ignore[attr-defined]
        except Exception as err:
            log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, err)

    def __enter__(self) -> TrialHeartbeat:
        if self.settings is not None and hasattr(self.storage, "record_heartbeat"):
            self._beat()
            self._thread = threading.Thread(target=self._loop, name="edge-search-heartbeat", daemon=True)
            self._thread.start()
        self.storage.set_trial_user_attr(self.trial_id, TrialRecord.OWNER, Owner.me().__dict__)
        return self

    def _loop(self) -> None:
        assert self.settings is not None
        while not self._stop.wait(self.settings.interval_s):
            self._beat()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def taken_over(self) -> bool:
        """See `was_taken_over`."""
        return was_taken_over(self.study, self.trial_id)


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()`` without Optuna's warning that heartbeats are meant for ``Study.optimize``
    (this module records them around ask/tell instead)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


def was_taken_over(study: optuna.Study, trial_id: int) -> bool:
    """True when the trial is no longer RUNNING although this process has not told it (a sweep in
    another process failed it as stale while this one was stopped)."""
    try:
        return study._storage.get_trial(trial_id).state != TrialState.RUNNING
    except Exception:
        return False


def is_surplus(study: optuna.Study, trial_number: int, target: int) -> bool:
    """Whether evaluated complete trials (not failures or duplicates, `TrialRecord.evaluated`) plus
    running trials numbered below this one already make `target`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE and TrialRecord.of(t).evaluated for t in trials)
    ahead = sum(t.state == TrialState.RUNNING and t.number < trial_number for t in trials)
    return complete + ahead >= target


def yield_surplus(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail a surplus trial (FAIL: invisible to the samplers); a redo popped from the queue goes back."""
    storage = study._storage
    frozen = storage.get_trial(trial._trial_id)
    storage.set_trial_user_attr(trial._trial_id, TrialRecord.SURPLUS, True)
    storage.set_trial_user_attr(trial._trial_id, TrialRecord.FAIL_REASON,
                                "surplus: other processes already run the last trials of the study")
    study.tell(trial, state=TrialState.FAIL)
    keep = {k: v for k, v in frozen.user_attrs.items() if k in (TrialRecord.RETRY_OF, TrialRecord.RETRY_REASON)}
    if frozen.params:  # a redo (`RedoStaleTrial`): the same parameters, queued again
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=frozen.params,
                                            distributions=frozen.distributions, user_attrs=keep,
                                            system_attrs=frozen.system_attrs))
    elif "fixed_params" in frozen.system_attrs:  # an `enqueue_trial`d configuration
        study.enqueue_trial(frozen.system_attrs["fixed_params"], user_attrs=keep, skip_if_exists=False)


@dataclass
class Recovered:
    """A trial failed because its process was gone, and redone."""

    number: int
    reason: str
    owner: dict[str, Any] | None = None
    """The ``owner`` attribute of the failed trial (host, pid, started), when it had one."""
    requeued: bool = True
    """False when the configuration was already redone `MAX_RETRY` times (it stays failed)."""

    def summary(self) -> str:
        what = "redone with the same parameters" if self.requeued else "failed, not redone again"
        return f"trial {self.number} {what}: {self.reason}"


@dataclass
class Sweeper:
    """Finds trials whose process is gone and has them failed and redone (see the module docstring)."""

    study: optuna.Study
    settings: HeartbeatSettings | None
    observe_unowned: bool = True
    """Fail RUNNING trials that have had neither owner nor heartbeat for a grace period (off for Ray,
    whose driver asks trials that wait for a worker)."""
    mark_failed: Callable[[FrozenTrial, str], None] | None = None
    """Marks a failed trial's MLflow run failed (see `RedoStaleTrial.mark_failed`)."""
    _unowned_since: dict[int, float] = field(default_factory=dict)

    def sweep(self) -> list[Recovered]:
        """Fail and redo every trial whose process is dead or frozen; returns what was redone."""
        callback = stale_callback(self.study)
        before = len(callback.redone) if callback else 0
        done: list[Recovered] = []
        if self.settings is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        if callback is not None:
            done += callback.redone[before:]
        now = time.monotonic()
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in running:
            owner = t.user_attrs.get(TrialRecord.OWNER)
            if owner is not None:
                self._unowned_since.pop(t._trial_id, None)
                if Owner(**owner).dead_here():
                    done += self._fail(t, "its process died")
            elif self.observe_unowned and self.settings is not None:
                first = self._unowned_since.setdefault(t._trial_id, now)
                if now - first > self.settings.grace_s:
                    done += self._fail(t, "its process died before its first heartbeat")
        live = {t._trial_id for t in running}
        for tid in list(self._unowned_since):
            if tid not in live:
                del self._unowned_since[tid]
        return done

    def _fail(self, trial: FrozenTrial, reason: str) -> list[Recovered]:
        storage = self.study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, TrialRecord.FAIL_REASON, reason)
            # An atomic state change (a row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite): of
            # several processes failing the same trial, exactly one gets past it and redoes it.
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                return []
        except optuna.exceptions.UpdateFinishedTrialError:
            return []
        failed = storage.get_trial(trial._trial_id)
        callback = stale_callback(self.study)
        if callback is None:
            callback = RedoStaleTrial()
            callback.mark_failed = self.mark_failed
        before = len(callback.redone)
        callback.redo(self.study, failed, reason)
        return callback.redone[before:]
