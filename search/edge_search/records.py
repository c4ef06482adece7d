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
    SEEDED = "seeded"
    """The reasons of the first configurations enqueued when the study was created (`edge_search.seeds`)."""
    CONFIRMATION = "confirmation"
    """The last confirmation of the front (`edge_search.confirm`; a finished trial's attributes
    cannot change, so it lives on the study): ``at``, ``rounds``, ``through`` (the newest trial it
    covered), ``front`` (trial numbers) and ``trials``: trial number -> the confirmed latency
    (`TrialRecord.latency_summary` plus ``metrics``, the objective values it changes, and
    ``search_median_ms``)."""
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
    def confirmation(self) -> dict[str, Any]:
        return dict(self.attrs.get(self.CONFIRMATION) or {})

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
    """One value per space constraint, then the fits-the-device, evaluation-failed and duplicate flags
    (the last two since issue 14); <= 0 satisfied (Optuna's convention)."""
    METRICS = "metrics"
    TIMINGS = "timings"
    """Seconds spent per pipeline stage."""
    CACHE_HITS = "cache_hits"
    LATENCY_SOURCE = "latency_source"
    LATENCY = "latency"
    """A summary of the trial's `LatencyStats` (`latency_summary`); the raw samples are in MLflow."""
    DEPLOYABLE_PATH = "deployable_path"
    INPUT_SHAPES = "input_shapes"
    """Input name -> the concrete shape the latency was measured at (every input; export records it)."""
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
    CONFIG_KEY = "config_key"
    """The configuration's identity before it is built (`Pipeline.config_key`)."""
    RESULT_KEY = "result_key"
    """What the trial produced, as a key (`TrialResult.identity`: deployable bytes + session knobs)."""
    OUTCOME = "outcome"
    """On a COMPLETE trial: ``evaluated`` (a configuration measured for the first time), ``failed`` (a
    deterministic stage failed: told with worst values as infeasible, so the sampler moves away) or
    ``duplicate`` (a configuration already in the study: told infeasible with the original's values,
    not evaluated, not counted). Trials from before this key count as ``evaluated``."""
    FAIL_STAGE = "fail_stage"
    FAIL_CAUSE = "fail_cause"
    """``stage ExceptionType`` (``transform ValueError``) or ``invalid``: what failures are counted by."""
    DUPLICATE_OF = "duplicate_of"
    """On a duplicate: the number of the trial that has (or is evaluating) the configuration."""
    SEED_REASON = "seed_reason"
    """On a trial enqueued as one of a new study's first configurations: why (``ORT's default session``)."""

    EVALUATED, FAILED, DUPLICATE = "evaluated", "failed", "duplicate"

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
    def input_shapes(self) -> dict[str, list[int]]:
        """The measured input shapes; empty for trials recorded before they were kept."""
        return {str(k): [int(d) for d in v] for k, v in (self.attrs.get(self.INPUT_SHAPES) or {}).items()}

    @property
    def val_curve(self) -> dict[int, float]:
        return {int(k): float(v) for k, v in (self.attrs.get(self.VAL_CURVE) or {}).items()}

    @property
    def outcome(self) -> str:
        return str(self.attrs.get(self.OUTCOME, self.EVALUATED))

    @property
    def evaluated(self) -> bool:
        """A configuration that was built and measured here (not a failure or a duplicate entry)."""
        return self.outcome == self.EVALUATED

    @property
    def config_key(self) -> str | None:
        return self.attrs.get(self.CONFIG_KEY)

    @property
    def result_key(self) -> str | None:
        return self.attrs.get(self.RESULT_KEY)

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
                "processes": int((stats.extra.get("interval") or {}).get("processes", 1)),
                "tries": int(stats.extra.get("tries", 1)), "discarded": int(stats.extra.get("discarded", 0)),
                "shapes": stats.extra.get("input_shapes") or {},
                "source": stats.source, "stop_reason": stats.stop_reason, "warnings": list(stats.warnings),
                "started_at": stats.started_at, "ended_at": stats.ended_at, "lease_wait_s": stats.lease_wait_s,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S",
                                             time.localtime(stats.ended_at or time.time()))}

    @staticmethod
    def curve_attr(curve: Mapping[int, float]) -> dict[str, float]:
        """The `VAL_CURVE` attribute for a validation curve (JSON keys are strings)."""
        return {str(k): v for k, v in curve.items()}
