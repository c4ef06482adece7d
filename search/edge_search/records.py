"""The layout of what edge-search keeps in an Optuna study: study and trial user attributes.

The study is the source of truth (MLflow is rebuilt from it after a crash), so its attribute keys
are a file format: `StudyRecord` and `TrialRecord` own them. Writers (`StudySession`, the drivers)
set attributes under these keys; every reader (pareto, export, the dashboards, `run`'s summary)
reads them through a record, never by a string of its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from edge_search.devices.stats import LatencyStats


@dataclass(frozen=True)
class StudyRecord:
    """A study's user attributes (set once when the study is created; see `StudySession.open`)."""

    SPACE_HASH = "space_hash"
    SPACE = "space"
    """The search space as JSON (`SearchSpace.model_dump`)."""
    DEVICE = "device"
    PROFILE_VERSION = "profile_version"
    OBJECTIVES = "objectives"
    """Objective names, in the order of the trials' values."""
    TASK = "task"
    VERSION = "edge_search_version"
    PARENT_RUN_ID = "mlflow_parent_run_id"
    """The study's MLflow parent run."""
    HYPERVOLUME_REFERENCE = "hypervolume_reference"
    """Objective name -> reference point, fixed the first time the dashboards are logged."""

    attrs: Mapping[str, Any]

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        return cls(study.user_attrs)

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @property
    def device(self) -> str:
        return str(self.attrs.get(self.DEVICE, ""))

    @property
    def space(self) -> dict[str, Any]:
        return dict(self.attrs.get(self.SPACE) or {})

    @property
    def parent_run_id(self) -> str | None:
        return self.attrs.get(self.PARENT_RUN_ID)

    @property
    def objective_names(self) -> list[str] | None:
        names = self.attrs.get(self.OBJECTIVES)
        return list(names) if names else None


@dataclass(frozen=True)
class TrialRecord:
    """A trial's user attributes: what `StudySession` records as the trial is begun, finished or rejected."""

    OWNER = "owner"
    """host, pid and start time of the process running the trial (orphans are recovered by it)."""
    CONFIG_PARAMS = "config_params"
    """Every knob as ``train.*`` / ``deploy.*`` (Optuna's params hold only the sampled ones)."""
    RUN_ID = "mlflow_run_id"
    CONSTRAINT_VIOLATIONS = "constraint_violations"
    """One value per space constraint, then the fits-the-device flag; <= 0 satisfied (Optuna's convention)."""
    METRICS = "metrics"
    TIMINGS = "timings"
    """Seconds spent per pipeline stage."""
    CACHE_HITS = "cache_hits"
    LATENCY_SOURCE = "latency_source"
    LATENCY = "latency"
    """A summary of the trial's `LatencyStats` (`latency_summary`); the raw samples are in MLflow."""
    DEPLOYABLE_PATH = "deployable_path"
    VAL_CURVE = "val_curve"
    """Validation accuracy per epoch (``{"1": 0.8, ...}``), for early stopping."""
    INFEASIBLE = "infeasible"
    FAIL_REASON = "fail_reason"
    INVALID_REASON = "invalid_reason"
    STOPPED = "stopped"
    """Why a trial was stopped before it finished: ``early-stop`` or ``latency-gate``."""
    RETRY_OF = "retry_of"
    """On a trial that redoes one whose process died or froze: that trial's number."""
    RETRY_REASON = "retry_reason"
    """Why the trial in `RETRY_OF` was redone (its own record cannot change: it is finished)."""
    SURPLUS = "surplus"
    """True on a trial given back because other processes already ran the study's last trials."""

    attrs: Mapping[str, Any]
    params: Mapping[str, Any]
    """Optuna's own params of the trial (the sampled knobs)."""

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        return cls(trial.user_attrs, trial.params)

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @property
    def config_params(self) -> dict[str, Any]:
        return dict(self.attrs.get(self.CONFIG_PARAMS, self.params))

    @property
    def run_id(self) -> str | None:
        return self.attrs.get(self.RUN_ID)

    @property
    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.attrs.get(self.METRICS) or {}).items()}

    @property
    def timings(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.attrs.get(self.TIMINGS) or {}).items()}

    @property
    def latency(self) -> dict[str, Any]:
        return dict(self.attrs.get(self.LATENCY) or {})

    @property
    def latency_source(self) -> str | None:
        return self.attrs.get(self.LATENCY_SOURCE)

    @property
    def deployable_path(self) -> str:
        return str(self.attrs.get(self.DEPLOYABLE_PATH, ""))

    @property
    def val_curve(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in (self.attrs.get(self.VAL_CURVE) or {}).items()}

    @property
    def feasible(self) -> bool:
        """Every constraint satisfied (a trial without recorded violations counts as feasible)."""
        violations = self.attrs.get(self.CONSTRAINT_VIOLATIONS)
        return violations is None or all(v <= 0 for v in violations)

    @staticmethod
    def latency_summary(stats: LatencyStats) -> dict[str, Any]:
        """The `LATENCY` attribute for a trial measured as `stats`."""
        return {"median_ms": stats.median_ms, "p90_ms": stats.p90_ms, "ci_low_ms": stats.ci_low_ms,
                "ci_high_ms": stats.ci_high_ms, "cv": stats.cv, "samples": len(stats.samples_ms),
                "source": stats.source, "stop_reason": stats.stop_reason, "warnings": list(stats.warnings),
                "started_at": stats.started_at, "ended_at": stats.ended_at, "lease_wait_s": stats.lease_wait_s,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S",
                                             time.localtime(stats.ended_at or time.time()))}

    @staticmethod
    def curve_attr(curve: Mapping[int, float]) -> dict[str, float]:
        """The `VAL_CURVE` attribute for a validation curve (JSON keys are strings)."""
        return {str(k): v for k, v in curve.items()}
