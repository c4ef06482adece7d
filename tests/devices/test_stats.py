"""LatencyStats, summarize and median_ci, checked against numpy/scipy on known samples."""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest
from scipy import stats as sps

from edge_search.devices.stats import SCHEMA_VERSION, LatencyStats, median_ci, summarize


def _lognormal(n: int, seed: int, scale: float = 5.0, sigma: float = 0.2) -> np.ndarray:
    return scale * np.random.default_rng(seed).lognormal(0.0, sigma, n)


def test_summarize_matches_numpy() -> None:
    x = _lognormal(257, seed=3)
    s = summarize(x)
    assert s["median_ms"] == pytest.approx(np.median(x))
    for q in (90, 95, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(x, q))
    assert s["mean_ms"] == pytest.approx(x.mean())
    assert s["stdev_ms"] == pytest.approx(x.std(ddof=1))
    assert s["cv"] == pytest.approx(x.std(ddof=1) / x.mean())
    assert s["ci_low_ms"] <= s["median_ms"] <= s["ci_high_ms"]


def test_summarize_known_small_sample() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0
    assert s["mean_ms"] == 22.0
    assert (s["ci_low_ms"], s["ci_high_ms"]) == (1.0, 100.0)  # n=5: too few for 95 %, falls back to the range
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize("n", [10, 20, 21, 50, 101, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_median_ci_matches_scipy_quantile_test(n: int, confidence: float) -> None:
    x = _lognormal(n, seed=n)
    ref = sps.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(confidence)
    if np.isnan(ref.low):  # scipy gives up where n is too small for this confidence
        pytest.skip("scipy has no interval at this n")
    assert median_ci(x, confidence) == pytest.approx((ref.low, ref.high))


@pytest.mark.parametrize("n", [12, 40, 150])
def test_median_ci_order_statistics_give_the_promised_coverage(n: int) -> None:
    """Exact check: the chosen order statistics are the tightest symmetric pair with >= 95 % coverage."""
    x = np.arange(n, dtype=float)  # x_(i) = i, so the CI bounds are the 0-based indices
    lo, hi = median_ci(x, 0.95)
    k = int(lo)
    assert int(hi) == n - 1 - k  # symmetric
    coverage = 1 - 2 * sps.binom.cdf(k, n, 0.5)  # P(x_(k) <= median <= x_(n-1-k)), 0-based k
    assert coverage >= 0.95
    assert 1 - 2 * sps.binom.cdf(k + 1, n, 0.5) < 0.95  # one step tighter would under-cover


def test_median_ci_coverage_by_simulation() -> None:
    """On a skewed distribution with a known median, ~95 % of intervals contain it."""
    rng = np.random.default_rng(7)
    n, reps, true_median = 60, 3000, 5.0  # lognormal(log 5, 0.3) has median 5
    data = true_median * rng.lognormal(0.0, 0.3, (reps, n))
    hits = 0
    for row in data:
        lo, hi = median_ci(row)
        hits += lo <= true_median <= hi
    lo_idx = int(median_ci(np.arange(n, dtype=float))[0])
    exact = 1 - 2 * sps.binom.cdf(lo_idx, n, 0.5)
    se = np.sqrt(exact * (1 - exact) / reps)
    assert abs(hits / reps - exact) < 4 * se
    assert hits / reps > 0.93


def test_latency_stats_is_immutable_and_round_trips() -> None:
    s = LatencyStats.from_samples([1.0, 1.1, 0.9, 1.05, 1.2] * 10, device="host", warmup_runs=7,
                                  knobs={"intra_op_threads": 2}, warnings=("w",))
    with pytest.raises(pydantic.ValidationError):
        s.median_ms = 3.0  # type: ignore[misc]
    text = s.to_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    assert len(data["samples_ms"]) == 50
    back = LatencyStats.from_json(text)
    assert back == s
    assert back.samples_ms == s.samples_ms
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema_version"):
        LatencyStats.from_json(json.dumps(data))
    assert s.summary()["latency_ms"] == s.median_ms
    assert s.ci_halfwidth_rel == pytest.approx((s.ci_high_ms - s.ci_low_ms) / 2 / s.median_ms)
