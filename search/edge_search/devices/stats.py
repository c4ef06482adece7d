"""`LatencyStats`, the immutable record of one latency measurement (or prediction), and the sample
statistics it is summarised with (comparing two measurements: `edge_search.check.statistics`).

Every latency edge-search logs, checks or plots is a `LatencyStats`, never a bare float: the raw
samples travel with the summary so that later steps (CI budgets, dashboards) can redo statistics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edge_search.metrics import STATS_SUMMARY
from edge_search.schema import StrictModel

SCHEMA_VERSION = 1

LatencySource = Literal["measured", "emulated"]
StopReason = Literal["precision", "time_cap", "max_samples", "predicted"]


class HostInfo(StrictModel):
    """Where a measurement ran: enough to refuse comparing results from different machines."""

    hostname: str = ""
    cpu_model: str = ""
    logical_cores: int = 0
    cores_used: tuple[int, ...] = ()
    ort_version: str = ""
    platform: str = ""
    python: str = ""
    steal_pct: float | None = None
    """Share of CPU time stolen by the hypervisor during the run (Linux /proc/stat), if known."""


class LatencyStats(StrictModel):
    """Latency of one model under one set of session knobs on one device, in milliseconds."""

    schema_version: int = SCHEMA_VERSION
    source: LatencySource = "measured"
    device: str
    samples_ms: tuple[float, ...] = ()
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    cv: float
    ci_low_ms: float
    """Lower bound of the confidence interval of the median (a prediction interval when emulated)."""
    ci_high_ms: float
    confidence: float = 0.95
    warmup_runs: int = 0
    warmup_ms: float = 0.0
    stop_reason: StopReason = "precision"
    session_load_ms: float = 0.0
    first_run_ms: float = 0.0
    peak_memory_mb: float = 0.0
    batch_size: int = 1
    knobs: dict[str, Any] = Field(default_factory=dict)
    """Session knobs the model ran with (threads, graph optimisation, execution mode)."""
    lease_wait_s: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    host: HostInfo = Field(default_factory=HostInfo)
    warnings: tuple[str, ...] = ()
    extra: dict[str, Any] = Field(default_factory=dict)
    """Source-specific detail, e.g. the emulator's per-op-class breakdown or the profile version."""

    @property
    def ci_halfwidth_rel(self) -> float:
        """Half the CI width relative to the median (0.02 means ±2 %)."""
        if self.median_ms <= 0:
            return math.inf
        return (self.ci_high_ms - self.ci_low_ms) / 2.0 / self.median_ms

    @property
    def throughput_per_s(self) -> float:
        """Items per second at the median latency and this batch size."""
        return self.batch_size * 1000.0 / self.median_ms if self.median_ms > 0 else 0.0

    def to_json(self) -> str:
        """Versioned JSON, round-trippable with `from_json`."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> LatencyStats:
        data = json.loads(text)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"LatencyStats schema_version {version} is not supported "
                             f"(expected {SCHEMA_VERSION})")
        return cls.model_validate(data)

    @property
    def n_samples(self) -> float:
        """Number of raw samples (as the float the metrics table logs)."""
        return float(len(self.samples_ms))

    def summary(self) -> dict[str, float]:
        """Flat numeric metrics, as logged to MLflow: the statistics of the metrics table
        (`edge_search.metrics.STATS_SUMMARY`), by metric name."""
        return {m.name: float(getattr(self, str(m.stats_field))) for m in STATS_SUMMARY}

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float] | np.ndarray, *, device: str, confidence: float = 0.95,
                     **fields: Any) -> LatencyStats:
        """Summarise raw samples; `fields` fills the remaining metadata."""
        data: dict[str, Any] = {**summarize(samples_ms, confidence), **fields}
        return cls(device=device, samples_ms=tuple(float(x) for x in samples_ms), confidence=confidence,
                   **data)


def _binom_cdf(n: int, q: float) -> np.ndarray:
    """CDF of Binomial(n, q) at 0..n, from log-factorials (numpy only: importing scipy.stats costs a
    worker process 0.5-1.4 s of start-up, more than the repetition phase itself)."""
    k = np.arange(n + 1)
    logfact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))))
    if q <= 0.0 or q >= 1.0:
        return np.where(k >= (0 if q <= 0.0 else n), 1.0, 0.0)
    logpmf = logfact[n] - logfact[k] - logfact[n - k] + k * math.log(q) + (n - k) * math.log1p(-q)
    return np.minimum(np.cumsum(np.exp(logpmf)), 1.0)


def _binom_ppf(a: float, n: int, q: float) -> int:
    """Smallest k with P(X <= k) >= a for X ~ Binomial(n, q) (scipy's `binom.ppf`)."""
    cdf = _binom_cdf(n, q)
    return min(int(np.searchsorted(cdf, a * (1 - 1e-12), side="left")), n)


def _binom_isf(a: float, n: int, q: float) -> int:
    """Smallest k with P(X > k) <= a for X ~ Binomial(n, q) (scipy's `binom.isf`)."""
    cdf = _binom_cdf(n, q)
    return min(int(np.searchsorted(cdf, (1.0 - a) * (1 - 1e-12), side="left")), n)


def quantile_ci(samples: Sequence[float] | np.ndarray, q: float, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the `q` quantile from binomial order statistics.

    Latency samples are skewed and heavy-tailed, so no normal approximation is used: the interval
    is [x_(l), x_(u)] with l, u taken from Binomial(n, q), as in Conover, *Practical Nonparametric
    Statistics*. Falls back to the sample range when n is too small.
    """
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n == 0:
        raise ValueError("no samples")
    alpha = 1.0 - confidence
    lo = max(_binom_ppf(alpha / 2.0, n, q) - 1, 0)  # ppf gives a count; indices are zero-based
    hi = min(_binom_isf(alpha / 2.0, n, q), n - 1)
    return float(x[lo]), float(x[hi])


def median_ci(samples: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the median (`quantile_ci` at 0.5): the worker's stopping rule."""
    return quantile_ci(samples, 0.5, confidence)


def summarize(samples_ms: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Median, percentiles, mean, stdev, CV and the CI of the median of raw samples."""
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0:
        raise ValueError("no samples")
    lo, hi = median_ci(x, confidence)
    mean = float(x.mean())
    stdev = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {
        "median_ms": float(np.median(x)),
        "p90_ms": float(np.percentile(x, 90)),
        "p95_ms": float(np.percentile(x, 95)),
        "p99_ms": float(np.percentile(x, 99)),
        "mean_ms": mean,
        "stdev_ms": stdev,
        "cv": stdev / mean if mean > 0 else 0.0,
        "ci_low_ms": lo,
        "ci_high_ms": hi,
    }
