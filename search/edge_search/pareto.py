"""The feasible Pareto set of a study, as plain records (`ParetoPoint`), from Optuna's own front."""

from __future__ import annotations

import json
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

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.trial, "params": self.params, "values": self.values,
                "mlflow_run_id": self.mlflow_run_id}


def objective_names(study: optuna.Study) -> list[str]:
    names = StudyRecord.of(study).objective_names
    if names:
        return names
    return [f"objective_{i}" for i in range(len(study.directions))]


def is_feasible(trial: FrozenTrial) -> bool:
    return TrialRecord.of(trial).feasible


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated complete trials (Optuna's `best_trials`, which honours constraints:
    failures and duplicates are infeasible), one per configuration: of trials with the same
    configuration or result key (two processes that evaluated one configuration at once, a study
    from before duplicates were detected) the first is kept."""
    seen: set[str] = set()
    out: list[FrozenTrial] = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        record = TrialRecord.of(t)
        keys = {k for k in (record.config_key, record.result_key) if k}
        if not keys:  # a study from before configuration keys: the knobs are the configuration
            keys = {json.dumps(record.config_params, sort_keys=True, default=str)}
        if keys & seen:
            continue
        seen |= keys
        out.append(t)
    return out


def pareto_points(study: optuna.Study) -> list[ParetoPoint]:
    names = objective_names(study)
    return [ParetoPoint(trial=t.number, params=TrialRecord.of(t).config_params,
                        values=dict(zip(names, t.values or (), strict=True)),
                        mlflow_run_id=TrialRecord.of(t).run_id)
            for t in front_trials(study)]


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
    """Complete trials that evaluated a configuration (not failure or duplicate entries)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if TrialRecord.of(t).evaluated]
