"""The data behind the dashboards, computed from a study as plain records (no plotting here).

`study_data(study)` reads every complete trial once and returns a `StudyData`: objective values,
knobs, feasibility and front membership per trial, the hypervolume after each trial, and the raw
latency samples of the front's configurations (fetched through a `SamplesLoader`, normally the
trial's MLflow artifact `latency_stats.json`). `figures.py` draws it; tests check it directly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.study import StudyDirection

from edge_search.pareto import confirmed_front, current_front, is_feasible, objective_names
from edge_search.records import StudyRecord, TrialRecord

if TYPE_CHECKING:
    from edge_search.tracking import Tracker

log = logging.getLogger(__name__)

REFERENCE_ATTR = StudyRecord.HYPERVOLUME_REFERENCE
"""Study user attr holding the hypervolume reference point (objective name -> value), fixed the
first time the dashboards are logged so the hypervolume history stays comparable on resume."""
MAX_PLOTTED_SAMPLES = 2000
"""Raw latency samples per configuration kept for plotting (evenly spaced quantiles beyond that)."""


@dataclass(frozen=True)
class TrialPoint:
    """One complete trial as the dashboards see it."""

    number: int
    values: dict[str, float]
    """Objective name -> value."""
    params: dict[str, Any]
    """Every knob as `train.*` / `deploy.*`."""
    metrics: dict[str, float]
    feasible: bool
    on_front: bool
    latency_source: str
    run_id: str | None
    confirmed: dict[str, Any] | None = None
    """The confirmed latency (`edge_search.confirm`: median, interval, rounds, the objective values it
    changes) when the study's last confirmation re-measured this trial and still holds."""
    latency: dict[str, Any] = field(default_factory=dict)
    """The trial's own measurement summary (`TrialRecord.latency_summary`)."""

    @property
    def shown_values(self) -> dict[str, float]:
        """Objective values with the confirmed latency metrics where there are some."""
        changed = (self.confirmed or {}).get("metrics") or {}
        return {k: float(changed.get(k, v)) for k, v in self.values.items()}


@dataclass(frozen=True)
class LatencySamples:
    """Latency of one configuration: raw samples when measured, only the summary when emulated."""

    trial: int
    samples_ms: tuple[float, ...]
    median_ms: float
    ci_low_ms: float
    ci_high_ms: float
    source: str
    device: str


@dataclass(frozen=True)
class StudyData:
    """Everything the figures and the report draw, for one study."""

    study_name: str
    device: str
    objectives: list[str]
    directions: list[str]
    """`maximize` / `minimize`, one per objective."""
    trials: list[TrialPoint]
    hypervolume: list[tuple[int, float]]
    """(trial number, hypervolume of the feasible trials up to and including it)."""
    reference: dict[str, float]
    latency: list[LatencySamples] = field(default_factory=list)
    """Front configurations' latency, in front order."""

    @property
    def front(self) -> list[TrialPoint]:
        return [t for t in self.trials if t.on_front]

    def varying_knobs(self, prefix: str = "") -> list[str]:
        """Knob names (starting with `prefix`) that take more than one value across the trials."""
        keys = sorted({k for t in self.trials for k in t.params if k.startswith(prefix)})
        return [k for k in keys if len({json.dumps(t.params.get(k), default=str) for t in self.trials}) > 1]

    @property
    def latency_metric(self) -> str:
        """The latency metric to plot knob effects against: the first latency objective, else the median."""
        return next((o for o in self.objectives if o.startswith("latency")), "latency_ms")


SamplesLoader = Callable[[TrialPoint], LatencySamples | None]


# -- hypervolume ----------------------------------------------------------------------------------


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by `losses` (rows of minimised values) up to `reference`.

    Computed by `moocore.hypervolume` (exact: a sweep in 2-D and 3-D, HV4D+ and beyond), a
    public, pinned dependency: Optuna's implementation is private (`optuna._hypervolume`). Points
    not strictly better than the reference in every objective contribute nothing and are dropped
    first.
    """
    import moocore

    pts = np.asarray(losses, dtype=float).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(pts, ref=ref))


def _losses(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    return [-v if d == "maximize" else v for v, d in zip(values, directions, strict=True)]


def reference_point(trials: Sequence[TrialPoint], objectives: Sequence[str],
                    directions: Sequence[str]) -> dict[str, float]:
    """A reference point 10 % of the observed range beyond the worst feasible value of each objective."""
    pool = [t for t in trials if t.feasible] or list(trials)
    ref: dict[str, float] = {}
    for name, d in zip(objectives, directions, strict=True):
        vals = [t.values[name] for t in pool if math.isfinite(t.values[name])]
        if not vals:
            ref[name] = 0.0
            continue
        worst, best = (min(vals), max(vals)) if d == "maximize" else (max(vals), min(vals))
        margin = 0.1 * abs(worst - best) or 0.1 * abs(worst) or 1.0
        ref[name] = worst - margin if d == "maximize" else worst + margin
    return ref


def hypervolume_history(trials: Sequence[TrialPoint], objectives: Sequence[str], directions: Sequence[str],
                        reference: Mapping[str, float]) -> list[tuple[int, float]]:
    """Hypervolume of the feasible trials after each complete trial, in trial order.

    Recomputed only when a trial enters the running non-dominated set, so the cost is one exact
    hypervolume per front change.
    """
    ref = np.array([_losses([reference[o]], [d])[0] for o, d in zip(objectives, directions, strict=True)])
    front: list[np.ndarray] = []
    current = 0.0
    out: list[tuple[int, float]] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.feasible:
            p = np.array(_losses([t.values[o] for o in objectives], directions))
            if not any(np.all(q <= p) for q in front):
                front = [q for q in front if not np.all(p <= q)] + [p]
                current = hypervolume(np.array(front), ref)
        out.append((t.number, current))
    return out


# -- reading a study ------------------------------------------------------------------------------


def directions(study: optuna.Study) -> list[str]:
    """The study's directions as `maximize` / `minimize`."""
    return ["maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions]


def trial_points(study: optuna.Study) -> list[TrialPoint]:
    """Complete trials with their objectives, knobs, feasibility and front membership."""
    names = objective_names(study)
    on_front = {t.number for t in current_front(study)}
    confirmation = confirmed_front(study)
    confirmed = confirmation[1] if confirmation is not None else {}
    points = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.values is None or not TrialRecord.of(t).evaluated:  # failure and duplicate entries: no figures
            continue
        record = TrialRecord.of(t)
        points.append(TrialPoint(
            number=t.number, values=dict(zip(names, t.values, strict=True)), params=record.config_params,
            metrics=record.metrics, feasible=is_feasible(t), on_front=t.number in on_front,
            latency_source=str(record.latency_source or ""), run_id=record.run_id,
            confirmed=confirmed.get(t.number), latency=record.latency))
    return sorted(points, key=lambda p: p.number)


def study_data(study: optuna.Study, samples: SamplesLoader | None = None,
               reference: Mapping[str, float] | None = None) -> StudyData:
    """Compute the dashboards' data; `reference` defaults to the study's stored one, else the data's."""
    names = objective_names(study)
    dirs = directions(study)
    trials = trial_points(study)
    ref = dict(reference or study.user_attrs.get(REFERENCE_ATTR) or reference_point(trials, names, dirs))
    history = hypervolume_history(trials, names, dirs, ref) if trials else []
    latency: list[LatencySamples] = []
    for t in trials:
        if t.on_front:
            got = samples(t) if samples is not None else None
            latency.append(got or summary_samples(t, str(StudyRecord.of(study).device)))
    return StudyData(study_name=study.study_name, device=str(StudyRecord.of(study).device),
                     objectives=names, directions=dirs, trials=trials, hypervolume=history,
                     reference=ref, latency=latency)


def summary_samples(t: TrialPoint, device: str) -> LatencySamples:
    """Latency from the trial's summary metrics only (no raw samples)."""
    m = t.metrics
    median = m.get("latency_ms", float("nan"))
    return LatencySamples(trial=t.number, samples_ms=(), median_ms=median,
                          ci_low_ms=m.get("latency_ci_low_ms", median),
                          ci_high_ms=m.get("latency_ci_high_ms", median),
                          source=t.latency_source, device=device)


def samples_from_stats(trial: int, stats: Mapping[str, Any]) -> LatencySamples:
    """`LatencySamples` from a `LatencyStats` JSON document, thinned to `MAX_PLOTTED_SAMPLES`."""
    raw = np.asarray(stats.get("samples_ms") or (), dtype=float)
    if raw.size > MAX_PLOTTED_SAMPLES:
        raw = np.quantile(raw, np.linspace(0.0, 1.0, MAX_PLOTTED_SAMPLES))
    return LatencySamples(trial=trial, samples_ms=tuple(float(x) for x in raw),
                          median_ms=float(stats["median_ms"]), ci_low_ms=float(stats["ci_low_ms"]),
                          ci_high_ms=float(stats["ci_high_ms"]), source=str(stats.get("source", "")),
                          device=str(stats.get("device", "")))


def tracked_samples_loader(tracker: Tracker) -> SamplesLoader:
    """A loader reading each trial's `latency_stats.json` from its MLflow child run."""

    def load(t: TrialPoint) -> LatencySamples | None:
        if not t.run_id:
            return None
        try:
            text = tracker.read_text(t.run_id, "latency_stats.json")
            return samples_from_stats(t.number, json.loads(text))
        except Exception as err:  # missing run or artifact: fall back to the summary
            log.info("no latency samples for trial %s: %s", t.number, err)
            return None

    return load
