"""The feasible Pareto set of a study, as plain records (`ParetoPoint`), from Optuna's own front."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edge_search.records import StudyRecord, TrialRecord
from edge_search.space import knob_of_param


@dataclass(frozen=True)
class ParetoPoint:
    trial: int
    params: dict[str, Any]
    values: dict[str, float]
    """Objective values; latency objectives confirmed where the front was confirmed."""
    mlflow_run_id: str | None
    latency: dict[str, Any] | None = None
    """The latency figure the values rest on: ``median_ms``, ``ci_low_ms``, ``ci_high_ms`` (the 95 %
    interval), ``source`` (``confirmed``: re-measured in interleaved rounds by `edge_search.confirm`;
    ``search``: the trial's own measurement), ``rounds``, ``warnings``."""
    latency_source: str | None = None
    """``measured`` or ``emulated`` (a prediction); None for a trial recorded without it."""
    latency_interval_ms: tuple[float, float] | None = None
    """The latency's interval: the CI of the median when measured, the calibrated band when emulated."""
    sampled: frozenset[str] | None = None
    """The knobs the search chose for this trial (``deploy.precision``, ...); `params` also holds the
    defaults of knobs that do not apply to it (``calibration_method`` on fp32); None where unknown."""

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.latency_interval_ms or (None, None)
        return {"trial": self.trial, "params": self.params, "values": self.values,
                "latency_source": self.latency_source, "latency_ci_low_ms": lo, "latency_ci_high_ms": hi,
                "mlflow_run_id": self.mlflow_run_id, "latency": self.latency}


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


def values_with(t: FrozenTrial, names: Sequence[str], confirmed: dict[str, Any] | None) -> list[float]:
    """The trial's objective values, with its confirmed latency metrics where it has them."""
    vals = list(t.values or [])
    metrics = (confirmed or {}).get("metrics") or {}
    return [float(metrics[n]) if n in metrics else v for n, v in zip(names, vals, strict=True)]


def confirmed_front(study: optuna.Study) -> tuple[list[FrozenTrial], dict[int, dict[str, Any]]] | None:
    """The confirmed front and each of its trials' confirmed figures, when the study's last
    confirmation covers every evaluated trial (None: never confirmed, or trials finished since)."""
    conf = StudyRecord.of(study).confirmation
    if not conf:
        return None
    evaluated = [t.number for t in complete_trials(study)]
    if evaluated and max(evaluated) > int(conf.get("through", -1)):
        return None
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    front = [by_number[int(n)] for n in conf.get("front", []) if int(n) in by_number]
    return front, {int(k): dict(v) for k, v in (conf.get("trials") or {}).items()}


def current_front(study: optuna.Study) -> list[FrozenTrial]:
    """The front as it stands: the confirmed one when the last confirmation covers every evaluated
    trial, else the search front (`front_trials`)."""
    confirmed = confirmed_front(study)
    return confirmed[0] if confirmed is not None else front_trials(study)


def pareto_points(study: optuna.Study) -> list[ParetoPoint]:
    """The front as records: the confirmed front with its confirmed latency figures when the study's
    last confirmation covers every evaluated trial (`edge_search.confirm`), else the search front."""
    names = objective_names(study)
    confirmed = confirmed_front(study)
    if confirmed is not None:
        trials, figures = confirmed
    else:
        trials, figures = front_trials(study), {}
    points = []
    for t in trials:
        record = TrialRecord.of(t)
        fig = figures.get(t.number)
        lat = fig if fig is not None else record.latency
        latency = {"median_ms": lat.get("median_ms"), "ci_low_ms": lat.get("ci_low_ms"),
                   "ci_high_ms": lat.get("ci_high_ms"), "source": "confirmed" if fig is not None else "search",
                   "rounds": int(fig.get("rounds", 0)) if fig is not None else 0,
                   "warnings": list(lat.get("warnings") or [])} if lat else None
        points.append(ParetoPoint(trial=t.number, params=record.config_params,
                                  sampled=frozenset(knob_of_param(k) for k in t.params),
                                  values=dict(zip(names, values_with(t, names, fig), strict=True)),
                                  mlflow_run_id=record.run_id, latency=latency,
                                  latency_source=record.latency_source or record.latency.get("source"),
                                  latency_interval_ms=((float(fig["ci_low_ms"]), float(fig["ci_high_ms"]))
                                                       if fig is not None and fig.get("ci_low_ms") is not None
                                                       else _interval(record))))
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
    """Complete trials that evaluated a configuration (not failure or duplicate entries)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if TrialRecord.of(t).evaluated]
