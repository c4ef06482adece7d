"""Calibration fitting on synthetic data: the fit recovers known rates; written profiles load."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_search.devices.emulation import calibration as cal
from edge_search.devices.emulation.carry import ClassTime, HostBreakdown
from edge_search.devices.profile import Calibration, Sourced, get_profile, load_profile_file


def _host() -> Calibration:
    s = "test"
    return Calibration(
        source=s,
        params={
            "rate.fp32.compute": Sourced(value=100.0, source=s),
            "rate.fp32.memory": Sourced(value=10.0, source=s),
            "overhead_ms": Sourced(value=0.0, source=s),
        },
    )


def test_fit_group_rates_recovers_a_known_board() -> None:
    # board: 20 GFLOP/s compute, 2 GB/s memory (the same 5x slow-down the prior assumes), 3 ms overhead
    data = []
    for c_ms, m_ms in ((10, 1), (20, 5), (5, 4), (40, 2), (8, 8)):
        xc, xm = c_ms * 100.0, m_ms * 10.0
        data.append(("fp32", (xc, xm), 3.0 + xc / 20.0 + xm / 2.0))
    overhead, rates = cal.fit_group_rates(data, _host())
    assert overhead == pytest.approx(3.0, abs=0.05)
    assert rates["fp32"][0] == pytest.approx(20.0, rel=0.02)
    assert rates["fp32"][1] == pytest.approx(2.0, rel=0.05)


def test_thread_curve_is_the_median_ratio() -> None:
    rows = [
        cal.PublishedRow("d", "tflite", m, "fp32", n, t, "s")
        for m, ts in (("a", (100, 60, 50)), ("b", (200, 130, 100)), ("c", (50, 30, 26)))
        for n, t in zip((1, 2, 4), ts, strict=True)
    ]
    curve = cal.thread_curve(rows)
    assert curve[2] == pytest.approx(100 / 60)
    assert curve[4] == pytest.approx(2.0)


def test_board_fit_and_write_round_trip(tmp_path: Path) -> None:
    host = _host()
    proxies = {}
    rows = []
    for i, (c_ms, m_ms) in enumerate(((10, 1), (20, 5), (5, 4), (40, 2))):
        model = f"m{i}"
        proxies[(model, "fp32")] = HostBreakdown(
            (ClassTime("fp32", "conv_kxk", c_ms, 0, 1), ClassTime("fp32", "depthwise", m_ms, 0, 1))
        )
        t1 = 2.0 + c_ms * 5 + m_ms * 4
        rows += [
            cal.PublishedRow("raspberry-pi-4", "tflite-x", model, "fp32", 1, t1, "paper"),
            cal.PublishedRow("raspberry-pi-4", "tflite-x", model, "fp32", 2, t1 / 1.6, "paper"),
        ]
    fit = cal.fit_board_cpu(get_profile("raspberry-pi-4"), rows, proxies, host, "test.csv")
    assert fit.calibration.fit_stats["within_10"] == 1.0
    assert fit.calibration.speedup(2, "fp32", "conv_kxk") == pytest.approx(1.6)
    out = tmp_path / "raspberry-pi-4.yaml"
    out.write_text(
        "schema_version: 1\nname: raspberry-pi-4\ncpu: {architecture: aarch64, core_type: A72, cores: 4, "
        "clock_ghz: 1.5}\nmemory: {ram_mb: 4096, bandwidth_gb_s: 12.8}\nlatency: {method: emulated}\n"
        "calibration: {}\n"
    )
    cal.write_calibration(out, fit.calibration)
    prof = load_profile_file(out)
    assert prof.calibration.params["rate.fp32.compute"].source.startswith("fitted by edge-search calibrate")
