"""The feasible Pareto set of a study, as plain records (`ParetoPoint`), from Optuna's own front."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edge_search.records import StudyRecord, TrialRecord


@dataclass(frozen=True)
class ParetoPoint:
    trial: int
    params: dict[str, Any]
    values: dict[str, float]
    mlflow_run_id: str | None
    latency_source: str | None = None
    """``measured`` or ``emulated`` (a prediction); None for a trial recorded without it."""
    latency_interval_ms: tuple[float, float] | None = None
    """The latency's interval: the CI of the median when measured, the calibrated band when emulated."""

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.latency_interval_ms or (None, None)
        return {"trial": self.trial, "params": self.params, "values": self.values,
                "latency_source": self.latency_source, "latency_ci_low_ms": lo, "latency_ci_high_ms": hi,
                "mlflow_run_id": self.mlflow_run_id}


def latency_label(source: str | None) -> str:
    """How a figure's origin reads on the terminal: ``predicted (emulated)`` or ``measured``."""
    return {"emulated": "predicted (emulated)", "measured": "measured"}.get(source or "", source or "?")


def _interval(record: TrialRecord) -> tuple[float, float] | None:
    metrics, summary = record.metrics, record.latency
    lo = metrics.get("latency_ci_low_ms", summary.get("ci_low_ms"))
    hi = metrics.get("latency_ci_high_ms", summary.get("ci_high_ms"))
    return (float(lo), float(hi)) if lo is not None and hi is not None else None


def objective_names(study: optuna.Study) -> list[str]:
    names = StudyRecord.of(study).objective_names
    if names:
        return names
    return [f"objective_{i}" for i in range(len(study.directions))]


def is_feasible(trial: FrozenTrial) -> bool:
    return TrialRecord.of(trial).feasible


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated complete trials (Optuna's `best_trials`, which honours constraints)."""
    return sorted(study.best_trials, key=lambda t: t.number)


def pareto_points(study: optuna.Study) -> list[ParetoPoint]:
    names = objective_names(study)
    points = []
    for t in front_trials(study):
        record = TrialRecord.of(t)
        points.append(ParetoPoint(trial=t.number, params=record.config_params,
                                  values=dict(zip(names, t.values or (), strict=True)), mlflow_run_id=record.run_id,
                                  latency_source=record.latency_source or record.latency.get("source"),
                                  latency_interval_ms=_interval(record)))
    return points


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when `a` is at least as good as `b` in every objective and better in one.

    Written out here (rather than Optuna's private helper) so tests can check the tags of MLflow
    runs against an independent definition.
    """
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
