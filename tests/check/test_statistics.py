"""`compare` (ratio of medians with a bootstrap CI, Mann-Whitney U tests), checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from edge_search.check.statistics import compare
from edge_search.devices.stats import LatencyStats


def _lognormal(n: int, seed: int, scale: float = 5.0, sigma: float = 0.2) -> np.ndarray:
    return scale * np.random.default_rng(seed).lognormal(0.0, sigma, n)


def _stats(samples: np.ndarray, device: str = "host") -> LatencyStats:
    return LatencyStats.from_samples(samples.tolist(), device=device)


def test_compare_matches_scipy() -> None:
    a = _lognormal(200, seed=1)
    b = 1.10 * _lognormal(180, seed=2)
    c = compare(_stats(a), _stats(b))
    assert c.ratio == pytest.approx(np.median(b) / np.median(a))
    assert c.p_value == pytest.approx(sps.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    assert c.p_value_slower == pytest.approx(sps.mannwhitneyu(b, a, alternative="greater").pvalue)
    assert c.ci_low < c.ratio < c.ci_high
    assert c.ci_low > 1.0  # 10 % slower with 200 samples at CV 20 %: clearly slower
    assert c.slower_than(0.0)
    assert not c.slower_than(0.5)


def test_compare_same_distribution_is_not_slower() -> None:
    a = _lognormal(300, seed=11)
    b = _lognormal(300, seed=12)
    c = compare(_stats(a), _stats(b))
    assert c.ci_low < 1.0 < c.ci_high
    assert c.p_value > 0.01
    assert not c.slower_than(0.0)


def test_compare_ratio_ci_covers_truth_by_simulation() -> None:
    """The bootstrap CI of the ratio of medians contains the true ratio most of the time."""
    rng = np.random.default_rng(5)
    hits, reps = 0, 60
    for i in range(reps):
        a = rng.lognormal(0.0, 0.2, 80)
        b = 1.2 * rng.lognormal(0.0, 0.2, 80)
        c = compare(_stats(a), _stats(b), n_resamples=500, seed=i)
        hits += c.ci_low <= 1.2 <= c.ci_high
    assert hits / reps >= 0.85


def test_compare_without_samples_uses_intervals() -> None:
    base = LatencyStats(device="d", median_ms=10, p90_ms=11, p95_ms=12, p99_ms=13, mean_ms=10, stdev_ms=1,
                        cv=0.1, ci_low_ms=9, ci_high_ms=11, source="emulated", stop_reason="predicted")
    cand = base.model_copy(update={"median_ms": 20.0, "ci_low_ms": 18.0, "ci_high_ms": 22.0})
    c = compare(base, cand)
    assert c.ratio == 2.0
    assert (c.ci_low, c.ci_high) == pytest.approx((18 / 11, 22 / 9))
    assert np.isnan(c.p_value)
