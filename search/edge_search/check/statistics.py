"""Statistics of `edge-search check`: intervals over measurement rounds and comparisons of two
models' latencies; the one home of comparison statistics (`compare` between two measurements too).

How noise is respected. A check measures each model in several *rounds*, each a fresh worker
process (`edge_search.check.runner`). Samples within one process are not independent of each other:
the process's memory layout, the cores it landed on, a neighbour that ran during it all shift
every sample of that process together. Bootstrapping the pooled raw samples would treat them as
independent and give an interval of the median ratio far too narrow (about ±0.03 % for two copies
of one model on the 2-core CI VM, where the per-process ratio actually spreads about ±1 %), so two
identical models would "differ" with p < 1e-20. The interval here is instead taken over rounds:

- relative budgets: per round, the ratio of the candidate's and the baseline's statistic (measured
  back to back, in alternating order), and a Student-t interval of the mean log ratio over the
  rounds (`paired_ratio_interval`); slow drift cancels within a pair, per-process effects widen
  the interval as they should. A stored baseline (another job) is compared unpaired (Welch).
  The budget *fails* only when that interval lies wholly above ``1 + allowed`` **and** a one-sided
  Mann-Whitney U test over the per-round values (rounds are the unit here too; over pooled samples
  it would share the bootstrap's false precision) says the candidate is slower; it *passes* when
  the interval lies wholly at or below the limit, and *warns* otherwise. With few rounds the U
  test cannot reach a small p at all (4 rounds a side: p >= 1/70), so a slowdown then warns.
- absolute latency budgets: a Student-t interval (log scale) of the per-round statistic, widened
  to contain the typical within-round interval (the CI of the median or quantile, or an emulator's
  prediction interval); *fail* when it lies wholly above the limit, *warn* when it straddles it.
- size and accuracy are deterministic (file bytes, a fixed evaluation split): plain comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from edge_search.check.budgets import LATENCY_FIELDS
from edge_search.devices.stats import LatencyStats, quantile_ci
from edge_search.metrics import METRICS


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval."""

    value: float
    low: float
    high: float


def log_t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Geometric mean of positive `values` with a Student-t interval on the log scale.

    One value gives a zero-width interval (the caller widens it with within-round information).
    """
    x = np.log(np.asarray(values, dtype=float))
    if x.size == 0:
        raise ValueError("no values")
    centre = float(x.mean())
    if x.size < 2:
        v = math.exp(centre)
        return Interval(v, v, v)
    half = float(sps.t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(math.exp(centre), math.exp(centre - half), math.exp(centre + half))


def paired_ratio_interval(baseline: Sequence[float], candidate: Sequence[float],
                          confidence: float = 0.95) -> Interval:
    """Ratio candidate/baseline from paired rounds: t interval of the mean per-round log ratio."""
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError("paired rounds need the same, non-zero number of values on both sides")
    return log_t_interval([c / b for b, c in zip(baseline, candidate, strict=True)], confidence)


def unpaired_ratio_interval(baseline: Sequence[float], candidate: Sequence[float],
                            confidence: float = 0.95) -> Interval:
    """Ratio of geometric means from unpaired rounds (a stored baseline): Welch t interval on logs."""
    a = np.log(np.asarray(baseline, dtype=float))
    b = np.log(np.asarray(candidate, dtype=float))
    if a.size < 2 or b.size < 2:
        raise ValueError("an unpaired comparison needs at least two rounds on each side")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(b.mean() - a.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(math.exp(diff), math.exp(diff), math.exp(diff))
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df) * se)
    return Interval(math.exp(diff), math.exp(diff - half), math.exp(diff + half))


def metric_value(stats: LatencyStats, metric: str) -> float:
    """The statistic `metric` names (a latency metric or ``peak_memory_mb``) of one measurement."""
    if metric == "peak_memory_mb":
        return stats.peak_memory_mb
    if metric not in LATENCY_FIELDS:
        raise ValueError(f"{metric} is not a measured metric")
    return float(getattr(stats, LATENCY_FIELDS[metric]))


def within_round_ci(stats: LatencyStats, metric: str, confidence: float = 0.95) -> tuple[float, float]:
    """The interval one measurement gives for `metric` on its own.

    Emulated: the prediction interval (tails are not predicted, so it stands for every latency
    metric). Measured: the CI of the median, of the quantile, or a normal CI of the mean; peak
    memory has none (a point).
    """
    if metric == "peak_memory_mb":
        return stats.peak_memory_mb, stats.peak_memory_mb
    value = metric_value(stats, metric)
    if stats.source == "emulated" or len(stats.samples_ms) < 2:
        return min(stats.ci_low_ms, value), max(stats.ci_high_ms, value)
    q = METRICS[metric].quantile
    if q == 0.5:
        return stats.ci_low_ms, stats.ci_high_ms
    if q is None:
        half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * stats.stdev_ms / math.sqrt(len(stats.samples_ms))
        return stats.mean_ms - half, stats.mean_ms + half
    return quantile_ci(stats.samples_ms, q, confidence)


def absolute_interval(rounds: Sequence[LatencyStats], metric: str, confidence: float = 0.95) -> Interval:
    """Interval of `metric` over measurement rounds: the t interval over rounds (log scale), widened
    to hold the median round's own interval (which dominates for one round or an emulated device)."""
    if not rounds:
        raise ValueError("no rounds")
    values = [metric_value(s, metric) for s in rounds]
    if metric == "peak_memory_mb" and min(values) <= 0:
        return Interval(float(np.median(values)), min(values), max(values))
    iv = log_t_interval(values, confidence)
    cis = [within_round_ci(s, metric, confidence) for s in rounds]
    lo = float(np.median([c[0] for c in cis]))
    hi = float(np.median([c[1] for c in cis]))
    return Interval(iv.value, min(iv.low, lo), max(iv.high, hi))


def pooled(rounds: Sequence[LatencyStats]) -> LatencyStats:
    """One `LatencyStats` of all rounds' raw samples (for the U test; its own CI is not used)."""
    samples = [x for s in rounds for x in s.samples_ms]
    first = rounds[0]
    if len(samples) < 2:
        return first
    return LatencyStats.from_samples(samples, device=first.device, confidence=first.confidence,
                                     source=first.source, host=first.host)


def u_test_slower(baseline: Sequence[LatencyStats], candidate: Sequence[LatencyStats], metric: str,
                  confidence: float = 0.95) -> tuple[float, float]:
    """(two-sided, one-sided 'candidate slower') Mann-Whitney U p-values over the per-round values.

    Each round (a fresh process) is one observation: the samples within a round share that
    process's effect, so they are not independent draws (see the module docstring). `confidence`
    is unused (kept for the signature); exact p-values are used where scipy can compute them.
    """
    a = [metric_value(s, metric) for s in baseline]
    b = [metric_value(s, metric) for s in candidate]
    if not a or not b or len(set(a) | set(b)) < 2:
        return 1.0, 1.0
    two = sps.mannwhitneyu(b, a, alternative="two-sided")
    greater = sps.mannwhitneyu(b, a, alternative="greater")
    return float(two.pvalue), float(greater.pvalue)


def smallest_u_p(n_baseline: int, n_candidate: int) -> float:
    """The smallest one-sided p-value the exact U test can give with these many rounds (every
    candidate round above every baseline round): 1 / C(n + m, n)."""
    return 1.0 / math.comb(n_baseline + n_candidate, n_baseline) if n_baseline and n_candidate else 1.0


@dataclass(frozen=True)
class Comparison:
    """How `candidate` compares to `baseline`: ratio of medians (>1 means slower) with its CI."""

    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided Mann-Whitney U p-value for 'the two sample sets come from one distribution'."""
    p_value_slower: float
    """One-sided Mann-Whitney U p-value for 'candidate is slower than baseline'."""
    confidence: float

    def slower_than(self, allowed_increase: float, alpha: float = 0.05) -> bool:
        """True when the whole CI of the ratio lies above 1 + allowed_increase and the U test agrees."""
        return self.ci_low > 1.0 + allowed_increase and self.p_value_slower < alpha


def compare(baseline: LatencyStats, candidate: LatencyStats, confidence: float = 0.95,
            n_resamples: int = 2000, seed: int = 0) -> Comparison:
    """Ratio of medians (candidate / baseline) with a bootstrap CI and Mann-Whitney U tests.

    Needs raw samples on both sides; emulated stats without samples are compared by their
    intervals only (the ratio CI then spans the ratio of interval bounds).
    """
    a = np.asarray(baseline.samples_ms, dtype=float)
    b = np.asarray(candidate.samples_ms, dtype=float)
    if a.size < 2 or b.size < 2:
        ratio = candidate.median_ms / baseline.median_ms
        return Comparison(ratio, candidate.ci_low_ms / baseline.ci_high_ms,
                          candidate.ci_high_ms / baseline.ci_low_ms, math.nan, math.nan, confidence)

    def ratio_of_medians(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(y, axis=axis) / np.median(x, axis=axis)

    res = sps.bootstrap((a, b), ratio_of_medians, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    two = sps.mannwhitneyu(b, a, alternative="two-sided")
    greater = sps.mannwhitneyu(b, a, alternative="greater")
    return Comparison(float(np.median(b) / np.median(a)), float(res.confidence_interval.low),
                      float(res.confidence_interval.high), float(two.pvalue), float(greater.pvalue),
                      confidence)
