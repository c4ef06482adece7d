"""THE table of metric names: every figure a trial, a measurement or a budget reports, once.

Each `Metric` says which way is better, its unit, where it comes from in a `LatencyStats` (if it is
a measurement statistic) and, for latency, which quantile of the per-sample distribution it is.
The search space (objectives, constraints), `LatencyStats.summary`, the latency gate, budgets.yaml
and the check reports all read their names from here; a metric is added in this one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Metric:
    """One metric name and what it means."""

    name: str
    direction: Direction
    """Which way is better (the default direction when a space names it as an objective)."""
    unit: str = ""
    """``ms``, ``MB``, ``1/s``, ``mJ``; empty for a fraction or a count."""
    stats_field: str | None = None
    """The `LatencyStats` attribute holding it (then it is part of `LatencyStats.summary`)."""
    quantile: float | None = None
    """For latency: the quantile of the per-sample distribution it is (0.5 the median); None for the
    mean and for everything that is not a per-sample statistic."""
    range: tuple[float, float] = (0.0, math.inf)
    """Where its values can lie at all: a constraint outside it can never be met."""
    objective: bool = False
    """A search space may name it as an objective or in a constraint."""

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"


_UNIT = (0.0, 1.0)

#: Every metric, in the order the search space lists its objectives (`OBJECTIVES`) and
#: `LatencyStats.summary` lists its statistics.
TABLE: tuple[Metric, ...] = (
    Metric("accuracy", "maximize", range=_UNIT, objective=True),
    Metric("fidelity", "maximize", range=_UNIT, objective=True),
    # bring-your-own-model tasks (`onnx`, `torch`): task metrics where the data has labels ...
    Metric("top1", "maximize", range=_UNIT, objective=True),
    Metric("top5", "maximize", range=_UNIT, objective=True),
    Metric("mae", "minimize", objective=True),
    # ... and fidelity of the deployable model to the task's fp32 model on the same inputs
    Metric("fidelity_top1", "maximize", range=_UNIT, objective=True),
    Metric("fidelity_cosine", "maximize", range=(-1.0, 1.0), objective=True),
    Metric("fidelity_max_abs_err", "minimize", objective=True),
    # latency statistics of one measurement (or prediction)
    Metric("latency_ms", "minimize", "ms", "median_ms", 0.5, objective=True),
    Metric("latency_p90_ms", "minimize", "ms", "p90_ms", 0.9, objective=True),
    Metric("latency_p95_ms", "minimize", "ms", "p95_ms", 0.95, objective=True),
    Metric("latency_p99_ms", "minimize", "ms", "p99_ms", 0.99, objective=True),
    Metric("latency_mean_ms", "minimize", "ms", "mean_ms"),
    Metric("latency_stdev_ms", "minimize", "ms", "stdev_ms"),
    Metric("latency_cv", "minimize", "", "cv"),
    Metric("latency_ci_low_ms", "minimize", "ms", "ci_low_ms"),
    Metric("latency_ci_high_ms", "minimize", "ms", "ci_high_ms"),
    Metric("latency_samples", "maximize", "", "n_samples"),
    Metric("session_load_ms", "minimize", "ms", "session_load_ms"),
    Metric("first_run_ms", "minimize", "ms", "first_run_ms"),
    # the deployable model's file
    Metric("size_mb", "minimize", "MB", objective=True),
    Metric("peak_memory_mb", "minimize", "MB", "peak_memory_mb", objective=True),
    Metric("throughput_per_s", "maximize", "1/s", "throughput_per_s", objective=True),
    Metric("energy_mj", "minimize", "mJ", objective=True),
)

METRICS: dict[str, Metric] = {m.name: m for m in TABLE}
"""Name -> `Metric`."""

OBJECTIVES: tuple[str, ...] = tuple(m.name for m in TABLE if m.objective)
"""Metrics a search space may name as objectives or in constraints."""

STATS_SUMMARY: tuple[Metric, ...] = tuple(m for m in TABLE if m.stats_field is not None)
"""What `LatencyStats.summary` reports, in this order."""

LATENCY_QUANTILES: tuple[str, ...] = tuple(m.name for m in TABLE if m.quantile is not None)
"""Latency metrics that are quantiles of the per-sample distribution (median, p90, p95, p99):
what the latency gate can decide before training."""

BUDGET_METRICS: tuple[str, ...] = ("latency_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
                                   "latency_mean_ms", "peak_memory_mb", "size_mb", "accuracy")
"""Metrics a budgets.yaml file may limit, in the order error messages list them."""

MEASURED_BUDGET_METRICS: tuple[str, ...] = tuple(n for n in BUDGET_METRICS if METRICS[n].stats_field)
"""Budget metrics that come from measurement rounds (noisy: decided with intervals)."""


def direction(name: str) -> Direction:
    """The better direction of a metric (``minimize`` for a name the table does not know)."""
    m = METRICS.get(name)
    return m.direction if m is not None else "minimize"


def unit(name: str) -> str:
    """The unit of a metric (empty for a fraction, a count, or a name the table does not know)."""
    m = METRICS.get(name)
    return m.unit if m is not None else ""


def value_range(name: str) -> tuple[float, float]:
    """Where a metric's values can lie (``[0, inf)`` unless the table says otherwise)."""
    m = METRICS.get(name)
    return m.range if m is not None else (0.0, math.inf)
