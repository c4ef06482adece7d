"""The `Driver` seam: who asks for configurations until a study holds enough finished trials.

A driver is one function with the signature of `Driver.__call__`. `edge-search run` opens the
study (`StudySession`), builds the `Pipeline` that evaluates a configuration in this process, and
hands both to the driver named by ``--backend`` (`edge_search.drivers.DRIVERS`). Every driver
records trials through the same `StudySession` methods (`begin_trial`, `complete_trial`,
`reject_trial`), so `pareto`, the dashboards and `export` do not care which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edge_search.heartbeat import HeartbeatSettings

if TYPE_CHECKING:
    from edge_search.pipeline import Pipeline
    from edge_search.progress import RunProgress
    from edge_search.study import StudySession


@dataclass(frozen=True)
class DriverOptions:
    """What a driver may need beyond the study and the pipeline (scale-out settings)."""

    workers: int = 2
    """Trials evaluated at once (drivers that evaluate in parallel)."""
    address: str | None = None
    """Cluster to join (Ray: ``auto`` or ``HOST:PORT``; None starts a local one)."""
    storage_url: str | None = None
    """The study's storage URL as given (None: the default SQLite file), for workers elsewhere."""
    profiles: tuple[Path, ...] = ()
    """Extra device profile files or folders, for workers elsewhere."""
    heartbeat: HeartbeatSettings | None = None
    """Trial heartbeats and the grace period after which a silent trial is redone (None: off)."""


class Driver(Protocol):
    """Evaluates trials of `session` until it holds `n_trials` complete ones.

    Called once per `edge-search run`, in the process that opened the study, after orphaned
    trials were recovered. While it runs, it must keep recovering them (`session.sweeper`) and
    record every trial's heartbeat (`edge_search.recovery.TrialHeartbeat`), with
    `options.heartbeat`. It must record every trial it starts (complete, pruned as invalid, or
    failed with its reason) through `session`, call `progress.update` as trials finish, keep the
    front current (`session.update_front`), and return when `session.n_complete() >= n_trials`.
    It may evaluate with `pipeline` in this process (embedded) or rebuild an equivalent pipeline in
    workers from `session`, `pipeline` and `options` (a cluster). It does not close the device or
    finish the session: the caller does, whether the driver returned or raised.
    """

    def __call__(self, session: StudySession, pipeline: Pipeline, n_trials: int, progress: RunProgress,
                 options: DriverOptions) -> None: ...
