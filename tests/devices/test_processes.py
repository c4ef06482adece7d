"""The process as the unit of a latency interval (issue 14 item 7): the interval's maths and its
coverage, the host's noise model, the retry of flagged workers, and real workers."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from edge_search.devices.base import MeasureRequest, SessionKnobs
from edge_search.devices.lease import LeaseHandle
from edge_search.devices.local import LocalDevice
from edge_search.devices.noise import (
    DEFAULT_PROCESS_RSD,
    DEFAULT_REGIME_RSD,
    MAX_PRIOR_DF,
    MAX_STORE_DF,
    HostNoise,
    NoisePrior,
    default_prior,
)
from edge_search.devices.processes import combine_processes, needs_retry, process_interval
from edge_search.devices.profile import get_profile
from edge_search.devices.stats import LatencyStats, _binom_isf, _binom_ppf
from edge_search.devices.worker.engine import read_autogroup_nice

# -- the binomial quantiles of the stopping rule, without scipy.stats in the worker -----------------


@pytest.mark.parametrize("n", [1, 2, 5, 19, 20, 21, 99, 100, 101, 1000, 4321, 100_000])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_binomial_quantiles_match_scipy(n: int, q: float) -> None:
    for a in (0.005, 0.025, 0.05):
        assert _binom_ppf(a, n, q) == int(sps.binom.ppf(a, n, q))
        assert _binom_isf(a, n, q) == int(sps.binom.isf(a, n, q))


def test_the_worker_does_not_import_scipy_stats() -> None:
    """scipy.stats costs a worker 0.5-1.4 s of start-up; the engine must not need it."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from edge_search.devices.worker import entry, engine; "
            "from edge_search.devices.stats import summarize; summarize(np.arange(1.0, 500.0)); "
            "sys.exit(1 if 'scipy.stats' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- the interval -----------------------------------------------------------------------------


def _stats(median: float, *, warnings: tuple[str, ...] = (), runq: float | None = 1.0, n: int = 50,
           seed: int = 0) -> LatencyStats:
    rng = np.random.default_rng(seed)
    samples = median * np.exp(rng.normal(0.0, 0.01, n))
    samples *= median / float(np.median(samples))
    s = LatencyStats.from_samples(samples, device="host", extra={"runq_wait_pct": runq, "robust_cv": 0.01})
    return s.model_copy(update={"warnings": warnings})


def test_interval_formula() -> None:
    prior = NoisePrior(process_rsd=0.03, regime_rsd=0.02, df=4, source="t")
    iv = process_interval([1.0, 1.1], prior)
    y = np.log([1.0, 1.1])
    ss = float(((y - y.mean()) ** 2).sum())
    sp2 = (4 * 0.03 ** 2 + ss) / 5
    hw = sps.t.ppf(0.975, 5) * math.sqrt(2 * 0.02 ** 2 + 2 * sp2 / 2)
    assert iv["centre_ms"] == pytest.approx(math.sqrt(1.1))
    centre = math.sqrt(1.1)
    assert (iv["low_ms"], iv["high_ms"]) == pytest.approx((centre * math.exp(-hw), centre * math.exp(hw)))
    assert iv["location_low_ms"] > iv["low_ms"] and iv["location_high_ms"] < iv["high_ms"]
    # processes that disagree widen it; the prior alone (one process) gives the t(df) interval
    assert process_interval([1.0, 1.5], prior)["high_ms"] / math.sqrt(1.5) > iv["high_ms"] / math.sqrt(1.1)
    one = process_interval([2.0], prior)
    one_hw = sps.t.ppf(0.975, 4) * math.sqrt(2 * 0.02 ** 2 + 2 * 0.03 ** 2)
    assert one["high_ms"] / 2.0 == pytest.approx(math.exp(one_hw))


@pytest.mark.parametrize(("k", "sigma_b", "sigma_r"), [(1, 0.03, 0.03), (2, 0.03, 0.03), (2, 0.10, 0.02),
                                                       (3, 0.02, 0.05)])
def test_interval_covers_an_independent_fresh_measurement_95_percent(k: int, sigma_b: float, sigma_r: float) -> None:
    """Monte Carlo on the two-term model the interval assumes (a regime shared by the processes of a
    measurement, a term per process), with the host's terms known to 12 degrees of freedom: the
    interval of one measurement contains an independent measurement's figure ~95 % of the time."""
    rng = np.random.default_rng(k)
    n = 4000
    hits = 0
    for _ in range(n):
        # the prior the host has learned: noisy estimates of the true terms, 12 degrees of freedom each
        b_hat = sigma_b * math.sqrt(rng.chisquare(12) / 12)
        r_hat = sigma_r * math.sqrt(rng.chisquare(12) / 12)
        prior = NoisePrior(b_hat, r_hat, MAX_PRIOR_DF, "simulated")
        a = rng.normal(0, sigma_r) + rng.normal(0, sigma_b, k)
        b = rng.normal(0, sigma_r) + rng.normal(0, sigma_b, k)
        iv = process_interval(np.exp(a), prior)
        hits += iv["low_ms"] <= math.exp(b.mean()) <= iv["high_ms"]
    assert 0.93 <= hits / n <= 0.985


def test_one_process_ci_undercovers_where_the_process_interval_does_not() -> None:
    """The issue's evidence in miniature: a process's own CI of its median ignores the process term."""
    rng = np.random.default_rng(7)
    prior = NoisePrior(0.03, 0.02, MAX_PRIOR_DF, "simulated")
    old = new = 0
    for _ in range(400):
        def one() -> tuple[float, LatencyStats]:
            level = math.exp(rng.normal(0, 0.02) + rng.normal(0, 0.03))
            return level, _stats(level, seed=int(rng.integers(1 << 30)), n=400)
        (_, a), (lb, _) = one(), one()
        old += a.ci_low_ms <= lb <= a.ci_high_ms
        iv = process_interval([a.median_ms], prior)
        new += iv["low_ms"] <= lb <= iv["high_ms"]
    assert old / 400 < 0.5 < 0.9 < new / 400


def test_combine_processes() -> None:
    a, b = _stats(1.0, seed=1), _stats(1.21, warnings=("precision target not reached: x",), seed=2)
    bad = _stats(3.0, warnings=("contended: the measured threads waited 50% of the time for a CPU (> 20%)",))
    s = combine_processes([a, b], default_prior(1), discarded=[bad])
    assert s.median_ms == pytest.approx(1.1)
    assert len(s.samples_ms) == 100 and s.p90_ms == pytest.approx(np.percentile(s.samples_ms, 90))
    assert s.ci_low_ms < 1.0 and s.ci_high_ms > 1.21
    assert s.extra["tries"] == 3 and s.extra["discarded"] == 1
    assert [p["used"] for p in s.extra["processes"]] == [True, True, False]
    assert any(w.startswith("precision target not reached") for w in s.warnings)
    assert any(w.startswith("retried: 1 flagged worker process(es) replaced (contended)") for w in s.warnings)
    assert not any(w.startswith("contended") for w in s.warnings)  # the discarded process's flag is not the figure's
    assert s.extra["interval"]["processes"] == 2 and s.extra["interval"]["prior_source"].startswith("default")
    assert LatencyStats.from_json(s.to_json()) == s


# -- the host's noise model -------------------------------------------------------------------


def test_noise_prior_defaults_then_learns_per_thread_count(tmp_path: Path) -> None:
    noise = HostNoise(tmp_path / "h.json")
    assert noise.prior(1) == default_prior(1) and noise.prior(2).process_rsd == DEFAULT_PROCESS_RSD[2]
    assert noise.prior(4).regime_rsd == DEFAULT_REGIME_RSD[2]  # more threads: the largest key below
    rng = np.random.default_rng(0)
    for _ in range(100):  # a quiet host: processes 1 % apart, repeats 1.5 % apart in all
        noise.record_processes(1, np.exp(rng.normal(0, 0.01, 2)))
        noise.record_repeat(1, np.exp(rng.normal(0, 0.015, 6)))
    p1 = noise.prior(1)
    assert p1.process_rsd == pytest.approx(0.01, rel=0.25)
    assert p1.regime_rsd == pytest.approx(math.sqrt(0.015 ** 2 - 0.01 ** 2), rel=0.5)
    assert p1.df == MAX_PRIOR_DF and p1.source.startswith("host h")
    assert noise.prior(2) == default_prior(2)  # another thread count learned nothing
    doc = json.loads((tmp_path / "h.json").read_text())
    assert doc["threads"]["1"]["within"]["df"] <= MAX_STORE_DF  # old data is forgotten


def test_noise_store_survives_a_corrupt_or_unwritable_file(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text("{not json")
    noise = HostNoise(path)
    assert noise.prior(1) == default_prior(1)
    noise.record_processes(1, [1.0, 1.02])
    assert noise.prior(1).source.startswith("host")
    blocked = HostNoise(tmp_path / "file" / "h.json")
    (tmp_path / "file").write_text("a file where a folder should be")
    blocked.record_processes(1, [1.0, 1.02])  # no error: measuring goes on without learning
    assert blocked.prior(1) == default_prior(1)


# -- LocalDevice: k processes, flagged ones replaced (bounded) -----------------------------------


class _ScriptedDevice(LocalDevice):
    """LocalDevice whose workers are replaced by a script of results (the retry logic alone)."""

    def __init__(self, script: list[LatencyStats], tmp: Path, **kw: Any) -> None:
        super().__init__(get_profile("host"), noise=HostNoise(tmp / "noise.json"), **kw)
        self.script = list(script)
        self.started = 0

    def check(self, request: MeasureRequest) -> None:
        return None

    def _one_worker(self, payload: str, request: MeasureRequest, handle: LeaseHandle) -> LatencyStats:
        self.started += 1
        return self.script.pop(0)


CONTENDED = ("contended: the measured threads waited 60% of the time for a CPU (> 20%)",)
UNSTABLE = ("unstable: robust CV 30.0% > 10%",)


@pytest.fixture()
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_search.devices.local.RETRY_PAUSE_S", 0.0)


def test_flagged_workers_are_replaced_and_counted(tmp_path: Path, no_pause: None) -> None:
    script = [_stats(5.0, warnings=CONTENDED, runq=60), _stats(1.0), _stats(4.0, warnings=UNSTABLE), _stats(1.02)]
    dev = _ScriptedDevice(script, tmp_path, processes=2, max_retries=2)
    s = dev.measure(MeasureRequest(model_path=tmp_path / "m.onnx"))
    assert dev.started == 4 and s.extra["tries"] == 4 and s.extra["discarded"] == 2
    assert s.median_ms == pytest.approx(math.sqrt(1.02))
    assert s.warnings and s.warnings[-1].startswith("retried: 2 flagged")
    assert not needs_retry(s)  # the figure rests on unflagged processes only


def test_retries_are_bounded_and_the_least_contended_are_kept(tmp_path: Path, no_pause: None) -> None:
    script = [_stats(9.0, warnings=CONTENDED, runq=90), _stats(2.0, warnings=CONTENDED, runq=30),
              _stats(3.0, warnings=CONTENDED, runq=40), _stats(8.0, warnings=CONTENDED, runq=80), _stats(1.0)]
    dev = _ScriptedDevice(script, tmp_path, processes=2, max_retries=2)
    s = dev.measure(MeasureRequest(model_path=tmp_path / "m.onnx"))
    assert dev.started == 4 and len(dev.script) == 1  # 2 + 2 retries, never a fifth worker
    assert s.median_ms == pytest.approx(math.sqrt(2.0 * 3.0))  # runq 30 and 40 kept
    assert s.extra["tries"] == 4 and s.extra["discarded"] == 2
    assert any(w.startswith("contended") for w in s.warnings)  # used anyway: the warning stays


def test_no_retry_budget_means_no_retry(tmp_path: Path, no_pause: None) -> None:
    dev = _ScriptedDevice([_stats(2.0, warnings=UNSTABLE), _stats(2.1)], tmp_path, processes=1, max_retries=0)
    s = dev.measure(MeasureRequest(model_path=tmp_path / "m.onnx"))
    assert dev.started == 1 and s.extra["tries"] == 1 and s.median_ms == pytest.approx(2.0)


def test_measurements_teach_the_host_noise_model(tmp_path: Path, no_pause: None) -> None:
    dev = _ScriptedDevice([_stats(1.0), _stats(1.05)], tmp_path, processes=2)
    dev.measure(MeasureRequest(model_path=tmp_path / "m.onnx", session=SessionKnobs(intra_op_threads=1)))
    doc = json.loads((tmp_path / "noise.json").read_text())
    assert doc["threads"]["1"]["within"]["df"] == 1.0
    assert doc["threads"]["1"]["within"]["ss"] == pytest.approx(2 * (math.log(1.05) / 2) ** 2)


# -- real workers -----------------------------------------------------------------------------


def test_real_worker_records_scheduling_and_priority(models: dict[str, Path]) -> None:
    dev = LocalDevice(get_profile("host"), warmup_max_s=0.3, min_measure_s=0.1, processes=1, max_retries=0)
    s = dev.measure(MeasureRequest(model_path=models["static"], warmup_min_s=0.05, max_time_s=1.0))
    assert s.extra["robust_cv"] >= 0
    if Path("/proc/self/schedstat").exists():
        assert s.extra["runq_wait_pct"] is not None and s.extra["runq_wait_pct"] >= 0
    if Path("/proc/self/autogroup").exists() and os.geteuid() == 0:
        # its own autogroup at the requested niceness (nice alone is ignored across autogroups)
        assert s.extra["autogroup_nice"] == -10
        own = read_autogroup_nice()  # None where this process's autogroup file reads empty (some containers)
        kept = LocalDevice(get_profile("host"), warmup_max_s=0.3, min_measure_s=0.1, processes=1, max_retries=0,
                           autogroup=False).measure(MeasureRequest(model_path=models["static"], warmup_min_s=0.05,
                                                                   max_time_s=1.0))
        assert kept.extra["autogroup_nice"] == own  # as before issue 14: the caller's autogroup


def test_a_confirmation_round_is_one_worker_in_the_given_order(models: dict[str, Path],
                                                                make_gemm_chain: Callable[..., Path],
                                                                tmp_path: Path) -> None:
    small = make_gemm_chain(tmp_path / "small.onnx", layers=2, width=64, batch=4)
    dev = LocalDevice(get_profile("host"), warmup_max_s=0.3, min_measure_s=0.1)
    reqs = [MeasureRequest(model_path=p, warmup_min_s=0.05, max_time_s=1.0) for p in (models["static"], small)]
    a, b = dev.measure_round(reqs)
    assert a.extra["worker_pid"] == b.extra["worker_pid"]  # one process for the round
    assert a.extra["measure_ended_at"] <= b.extra["measure_started_at"]  # in the order given
    assert a.median_ms > b.median_ms  # 6 layers of 256 vs 2 of 64: each figure is its own model's
    (c,) = dev.measure_round(reqs[1:])
    assert c.extra["worker_pid"] != a.extra["worker_pid"]  # a fresh worker per round


@pytest.mark.slow
def test_real_intervals_cover_independent_fresh_measurements(make_gemm_chain: Callable[..., Path],
                                                             tmp_path: Path) -> None:
    """Six real two-process measurements of one model: each interval contains the others' figures
    (the issue asks for ~95 %; this machine's own noise model, learned as it goes, sets the width).
    With only 30 pairs and a shared machine the bound is loose (>= 80 %); the benchmark
    `benchmarks/measurement_intervals.py` measures coverage on many more."""
    model = make_gemm_chain(tmp_path / "m.onnx", layers=4, width=256, batch=16)
    dev = LocalDevice(get_profile("host"), warmup_max_s=0.3, min_measure_s=0.15)
    req = MeasureRequest(model_path=model, session=SessionKnobs(intra_op_threads=1), warmup_min_s=0.05,
                         max_time_s=1.0)
    runs = [dev.measure(req) for _ in range(6)]
    pairs = [(a, b) for a in runs for b in runs if a is not b]
    coverage = sum(a.ci_low_ms <= b.median_ms <= a.ci_high_ms for a, b in pairs) / len(pairs)
    assert coverage >= 0.8, [(round(r.median_ms, 4), round(r.ci_low_ms, 4), round(r.ci_high_ms, 4)) for r in runs]
