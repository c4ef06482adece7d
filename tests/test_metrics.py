"""The metrics table is the one owner of metric names: every reader sees the same names as before."""

from __future__ import annotations

import math

from edge_search.check.budgets import LATENCY_FIELDS, MEASURED_METRICS, parse_budget
from edge_search.devices.stats import LatencyStats
from edge_search.metrics import BUDGET_METRICS, LATENCY_QUANTILES, METRICS, OBJECTIVES, STATS_SUMMARY
from edge_search.pipeline import GATED_METRICS


def test_objectives_are_the_names_a_space_always_accepted() -> None:
    assert OBJECTIVES == ("accuracy", "fidelity", "top1", "top5", "mae", "fidelity_top1", "fidelity_cosine",
                          "fidelity_max_abs_err", "latency_ms", "latency_p90_ms", "latency_p95_ms",
                          "latency_p99_ms", "size_mb", "peak_memory_mb", "throughput_per_s", "energy_mj")


def test_latency_stats_summary_reports_the_table_in_its_order() -> None:
    stats = LatencyStats.from_samples([1.0, 2.0, 3.0, 4.0], device="d", session_load_ms=5.0, first_run_ms=6.0,
                                      peak_memory_mb=7.0, batch_size=2)
    summary = stats.summary()
    assert list(summary) == [
        "latency_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms", "latency_stdev_ms",
        "latency_cv", "latency_ci_low_ms", "latency_ci_high_ms", "latency_samples", "session_load_ms",
        "first_run_ms", "peak_memory_mb", "throughput_per_s"]
    assert summary["latency_ms"] == stats.median_ms and summary["latency_samples"] == 4.0
    assert summary["throughput_per_s"] == stats.throughput_per_s and summary["session_load_ms"] == 5.0
    assert all(isinstance(v, float) for v in summary.values())
    assert [m.name for m in STATS_SUMMARY] == list(summary)


def test_budget_vocabulary_is_a_view_of_the_table() -> None:
    assert BUDGET_METRICS == ("latency_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms",
                              "latency_mean_ms", "peak_memory_mb", "size_mb", "accuracy")
    assert LATENCY_FIELDS == {"latency_ms": "median_ms", "latency_p90_ms": "p90_ms", "latency_p95_ms": "p95_ms",
                              "latency_p99_ms": "p99_ms", "latency_mean_ms": "mean_ms"}
    assert (*LATENCY_FIELDS, "peak_memory_mb") == MEASURED_METRICS
    assert {m: METRICS[m].unit for m in BUDGET_METRICS} == {**dict.fromkeys(LATENCY_FIELDS, "ms"),
                                                           "peak_memory_mb": "MB", "size_mb": "MB", "accuracy": ""}
    assert [m for m in BUDGET_METRICS if METRICS[m].higher_is_better] == ["accuracy"]
    assert parse_budget("accuracy", 0.9)[0].text == ">= 0.9"  # direction from the table


def test_latency_gate_and_quantiles() -> None:
    assert GATED_METRICS == LATENCY_QUANTILES == ("latency_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms")
    assert [METRICS[m].quantile for m in LATENCY_QUANTILES] == [0.5, 0.9, 0.95, 0.99]
    assert METRICS["latency_mean_ms"].quantile is None


def test_every_stats_field_exists_and_ranges_are_sane() -> None:
    stats = LatencyStats.from_samples([1.0, 2.0], device="d")
    for m in METRICS.values():
        if m.stats_field is not None:
            assert math.isfinite(float(getattr(stats, m.stats_field))), m.name
        lo, hi = m.range
        assert lo < hi
    assert METRICS["fidelity_cosine"].range == (-1.0, 1.0) and METRICS["accuracy"].range == (0.0, 1.0)
