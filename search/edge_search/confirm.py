"""Confirm the front: re-measure its configurations interleaved in fresh workers, recompute it.

A search measures each configuration once, whenever its trial happens to run: one figure may come
from a quiet minute and its neighbour on the front from a contended one (issue 14: a front point
recorded at 0.0098 ms re-measured at 7.99 ms). Confirmation measures the front's configurations
again, side by side:

* the candidates: the front, plus near-front trials (dominated only through a latency objective
  whose interval reaches below what dominates them), at most `max_candidates`;
* `rounds` rounds (default 6); each round is one fresh worker process (`Device.measure_round`) that
  measures every candidate once, in the order A B C in even rounds and C B A in odd ones, so time-
  varying contention hits every configuration alike and each configuration sees each position;
* a round in which the engine flagged a measurement `contended`/`unstable` is measured again, at
  most `rounds // 2` times in all;
* per configuration, its `rounds` single-process figures are combined as a measurement of that many
  processes (`edge_search.devices.processes`: geometric mean, 95 % prediction interval with the
  host's noise model), and the spread of these figures around the search-time figure teaches the
  host's noise model (`HostNoise.record_repeat`);
* the front is recomputed with the confirmed latency figures (Optuna's `best_trials` only knows the
  values told at the end of each trial, which cannot change), and if a trial that was not
  re-measured enters it, it is confirmed in a second pass.

The result lives on the study (`StudyRecord.CONFIRMATION`); `pareto`, `report` and `export` show
the confirmed figures with their intervals. Emulated devices have nothing to confirm (a prediction
does not change when repeated).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from edge_search.config import DeployConfig
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.noise import HostNoise
from edge_search.devices.processes import combine_processes, needs_retry
from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError
from edge_search.metrics import METRICS
from edge_search.pareto import complete_trials, dominates, front_trials, objective_names, values_with
from edge_search.records import StudyRecord, TrialRecord

DEFAULT_ROUNDS = 6
MAX_CANDIDATES = 16

CONFIRMABLE = tuple(name for name, m in METRICS.items()
                    if m.stats_field is not None and (m.quantile is not None or name in (
                        "latency_mean_ms", "throughput_per_s")))
"""Objective values a confirmation replaces: the latency statistics of the samples (the median, the
percentiles, the mean and the throughput); memory and load time stay as the search measured them."""


@dataclass
class Confirmation:
    """What one confirmation did."""

    rounds: int
    trials: dict[int, LatencyStats] = field(default_factory=dict)
    """Trial number -> its confirmed latency."""
    front: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    """Trial number -> why it could not be re-measured (its model is no longer in the cache)."""
    extra_rounds: int = 0
    """Rounds measured again because a measurement in them was flagged."""
    wall_s: float = 0.0


def _directions(study: optuna.Study) -> list[str]:
    from optuna.study import StudyDirection

    return ["maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions]


def _feasible_evaluated(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in complete_trials(study) if TrialRecord.of(t).feasible and t.values]


def _front_of(points: dict[int, list[float]], directions: Sequence[str]) -> list[int]:
    return sorted(n for n, v in points.items()
                  if not any(dominates(w, v, directions) for m, w in points.items() if m != n))


def candidates(study: optuna.Study, limit: int = MAX_CANDIDATES) -> list[FrozenTrial]:
    """The front (one trial per configuration) plus near-front trials, at most `limit` in all.

    Near the front: a feasible evaluated trial that would be on it if each of its latency
    objectives were at the low end of its interval; or, when the engine flagged its measurement
    `contended`/`unstable` (its interval may not hold), if its latency were anything at all, i.e.
    its other objectives are not dominated. The nearest (smallest relative gap) come first."""
    names, dirs = objective_names(study), _directions(study)
    front = front_trials(study)
    chosen = {t.number: t for t in front}
    pts = {t.number: list(t.values or []) for t in front}
    near: list[tuple[float, FrozenTrial]] = []
    for t in _feasible_evaluated(study):
        if t.number in chosen:
            continue
        lat = TrialRecord.of(t).latency
        lo, med = lat.get("ci_low_ms"), lat.get("median_ms")
        flagged = any(str(w).startswith(("contended", "unstable")) for w in lat.get("warnings") or [])
        if not med or (not lo and not flagged):
            continue
        scale = 0.0 if flagged or lo is None else float(lo) / float(med)
        values = list(t.values or [])
        optimistic = []
        for n, v in zip(names, values, strict=True):
            if n == "throughput_per_s":
                optimistic.append(math.inf if scale == 0 else v / scale)
            elif n in CONFIRMABLE:
                optimistic.append(v * scale)
            else:
                optimistic.append(v)
        if any(dominates(w, optimistic, dirs) for w in pts.values()):
            continue
        gaps = [abs(v - o) / abs(v) for v, o in zip(values, optimistic, strict=True) if v and o != v]
        near.append((0.5 if flagged else min(gaps, default=0.0), t))
    for _, t in sorted(near, key=lambda x: (x[0], x[1].number)):
        if len(chosen) >= limit:
            break
        chosen[t.number] = t
    return sorted(chosen.values(), key=lambda t: t.number)


def request_of(t: FrozenTrial, precision_target: float = 0.02, max_time_s: float = 2.0) -> MeasureRequest:
    """How a trial's deployable model was measured: its file, its session knobs, its input shapes."""
    record = TrialRecord.of(t)
    path = Path(record.deployable_path)
    if not record.deployable_path or not path.is_file():
        raise InputError(f"trial {t.number}: its deployable model {path} is no longer in the cache")
    knobs = {k.removeprefix("deploy."): v for k, v in record.config_params.items() if k.startswith("deploy.")}
    deploy = DeployConfig(**knobs)
    shapes = {k: tuple(int(d) for d in v) for k, v in (record.latency.get("shapes") or {}).items()}
    return MeasureRequest(model_path=path, session=deploy.session(), shapes=shapes,
                          precision_target=precision_target, max_time_s=max_time_s, warmup_min_s=0.1)


def _threads(req: MeasureRequest) -> int:
    k = req.session
    return k.intra_op_threads * (k.inter_op_threads if k.execution_mode == "parallel" else 1)


def measure_interleaved(device: Device, requests: Sequence[MeasureRequest], rounds: int,
                        note: Callable[[str], None] = lambda _: None) -> tuple[list[list[LatencyStats]], int]:
    """`rounds` rounds over `requests`, A B C then C B A; a round with a flagged measurement is
    measured again (at most `rounds // 2` times in all). Returns, per request, its figure of each
    kept round, and how many rounds were measured again."""
    per: list[list[LatencyStats]] = [[] for _ in requests]
    flagged: list[list[LatencyStats]] = [[] for _ in requests]
    extra = 0
    r = 0
    while r < rounds:
        order = list(range(len(requests)))
        if r % 2:
            order.reverse()
        results = device.measure_round([requests[i] for i in order])
        by_index = dict(zip(order, results, strict=True))
        if any(needs_retry(s) for s in results) and extra < rounds // 2:
            extra += 1
            for i, s in by_index.items():
                flagged[i].append(s)
            why = "; ".join(sorted({w.split(":", 1)[0] for s in results for w in s.warnings}))
            note(f"confirm: round {r + 1} flagged ({why}); measuring it again")
            continue
        for i, s in by_index.items():
            per[i].append(s)
        r += 1
        note(f"confirm: round {r}/{rounds} done")
    return per, extra


def confirm_front(study: optuna.Study, device: Device, *, rounds: int = DEFAULT_ROUNDS,
                  noise: HostNoise | None = None, max_candidates: int = MAX_CANDIDATES,
                  note: Callable[[str], None] = lambda _: None) -> Confirmation:
    """Re-measure the front's configurations interleaved, recompute the front, record it on the study.

    Raises `InputError` for an emulated device or a study with nothing on its front."""
    if rounds < 2:
        raise InputError("--rounds must be at least 2 (the rounds are the unit of the interval)")
    if device.latency_source != "measured":
        raise InputError(f"device '{device.name}' predicts latency ({device.latency_source}); there is "
                         "nothing to confirm")
    t0 = time.perf_counter()
    noise = noise if noise is not None else HostNoise()
    names, dirs = objective_names(study), _directions(study)
    done = Confirmation(rounds=rounds)
    record = StudyRecord.of(study)
    confirmed: dict[int, dict[str, Any]] = {}
    todo = candidates(study, max_candidates)
    if not todo:
        raise InputError(f"study '{study.study_name}' has no feasible trial on its front to confirm")
    for _pass in range(2):
        reqs: list[tuple[FrozenTrial, MeasureRequest]] = []
        for t in todo:
            try:
                reqs.append((t, request_of(t)))
            except (InputError, ValueError) as err:
                done.skipped[t.number] = str(err)
        if reqs:
            note(f"confirm: {len(reqs)} configuration(s) x {rounds} interleaved rounds in fresh workers")
            per, extra = measure_interleaved(device, [r for _, r in reqs], rounds, note)
            done.extra_rounds += extra
            for (t, req), figures in zip(reqs, per, strict=True):
                threads = _threads(req)
                stats = combine_processes(figures, noise.prior(threads))
                done.trials[t.number] = stats
                search = TrialRecord.of(t).latency.get("median_ms")
                noise.record_repeat(threads, [s.median_ms for s in figures] + ([float(search)] if search else []))
                summary = stats.summary()
                confirmed[t.number] = {**TrialRecord.latency_summary(stats), "rounds": len(figures),
                                       "search_median_ms": search,
                                       "metrics": {n: summary[n] for n in names if n in CONFIRMABLE and n in summary}}
        points = {t.number: values_with(t, names, confirmed.get(t.number)) for t in _feasible_evaluated(study)}
        by_key: dict[str, int] = {}
        for t in _feasible_evaluated(study):  # one trial per configuration, as on the search front
            key = TrialRecord.of(t).result_key or TrialRecord.of(t).config_key or f"#{t.number}"
            if key in by_key:
                points.pop(t.number, None)
            else:
                by_key[key] = t.number
        front = _front_of(points, dirs)
        trials = {t.number: t for t in _feasible_evaluated(study)}
        todo = [trials[n] for n in front if n not in confirmed and n not in done.skipped]
        done.front = front
        if not todo:
            break
    evaluated = [t.number for t in complete_trials(study)]
    study.set_user_attr(StudyRecord.CONFIRMATION, {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": rounds, "device": device.name,
        "through": max(evaluated) if evaluated else -1, "front": done.front,
        "trials": {str(n): v for n, v in confirmed.items()}, "skipped": {str(n): v for n, v in done.skipped.items()},
        "extra_rounds": done.extra_rounds, "previous": record.confirmation.get("at")})
    done.wall_s = time.perf_counter() - t0
    return done


def agreement(confirmed: LatencyStats, again: LatencyStats, slack: float = 0.10) -> bool:
    """True when `again` (an independent measurement) lies within the confirmed interval widened by
    `slack` of the confirmed figure on each side: the issue's acceptance test for a trusted front."""
    lo = confirmed.ci_low_ms - slack * confirmed.median_ms
    hi = confirmed.ci_high_ms + slack * confirmed.median_ms
    return lo <= again.median_ms <= hi and math.isfinite(again.median_ms)


__all__ = ["DEFAULT_ROUNDS", "Confirmation", "agreement", "candidates", "confirm_front", "measure_interleaved",
           "request_of"]
