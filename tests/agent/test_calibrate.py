"""A board you own calibrates the fleet: `calibrate --device BOARD` through a real loopback agent, then
its emulated sibling predicts suite families the calibration never saw, within the band it wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_search.cli import main
from edge_search.devices.agent import AgentDevice
from edge_search.devices.base import MeasureRequest, SessionKnobs
from edge_search.devices.emulated import EmulatedDevice
from edge_search.devices.emulation.reference_suite import HOST_SUITE, export
from edge_search.devices.profile import get_profile, load_profile_file
from tests.agent.conftest import pool_profile, start_agents

pytestmark = pytest.mark.slow

FIT_FAMILIES = ("squeezenet", "mobilenetv3", "shufflenet")  # family names of the torchvision suite
HELD_OUT = ("mobilenetv2", "efficientnet")


def test_calibrate_through_the_agent_then_predict_held_out_families(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    (agent,) = start_agents(1, tmp_path, tmp_path / "token")
    try:
        profiles = tmp_path / "profiles"
        pool_profile(profiles, [agent.url], tmp_path / "token", name="loopback-board")
        out = tmp_path / "written" / "loopback-board.yaml"
        assert main(["calibrate", "--device", "loopback-board", "--profiles", str(profiles), "--quick",
                     "--families", ",".join(FIT_FAMILIES), "--out", str(out),
                     "--emulated-as", "loopback-sibling"]) == 0
        printed = capsys.readouterr().out
        assert f"wrote {out}" in printed and "loopback-sibling.yaml" in printed

        board = load_profile_file(out)
        cal = board.calibration
        assert board.latency.method == "agent"  # the board's own profile keeps measuring
        assert f"through {agent.url}" in cal.source and "measured on the board" in cal.source
        assert {"overhead_ms", "rate.fp32.compute", "rate.fp32.memory"} <= set(cal.params)
        assert cal.thread_scaling_by["fp32"][2].value > 0  # below 1 on a 2-core machine shared by others
        assert cal.error_band is not None and "leave-one-family-out" in cal.error_band.source
        assert cal.fit_stats["lofo_n"] >= 2 * len(FIT_FAMILIES)

        sibling = load_profile_file(out.parent / "loopback-sibling.yaml")
        assert sibling.latency.method == "emulated" and sibling.calibration == cal

        # held-out families: predicted from the sibling, measured on the board; inside the band
        band = cal.error_band.value
        predictor = EmulatedDevice(sibling, host_profile=get_profile("host"), measure_memory=False, profile_runs=10)
        results = []
        with AgentDevice(board) as measured:
            for m in (m for m in HOST_SUITE if m.family in HELD_OUT):
                path = export(m)
                for threads in (1, 2):
                    req = MeasureRequest(model_path=path, session=SessionKnobs(intra_op_threads=threads),
                                         max_time_s=1.0, min_samples=10)
                    pred = predictor.measure(req)
                    # the fastest of two, as the calibration keeps: this machine is shared and noisy
                    real = min(measured.measure(req).median_ms for _ in range(2))
                    results.append((m.name, threads, pred.median_ms, real, pred.ci_low_ms, pred.ci_high_ms))
        inside = [lo <= real <= hi for *_, real, lo, hi in results]
        # the band is a quantile of held-out errors, not a bound: all four inside would be asked of an
        # 85 % band only with luck (and a loaded machine moves the measured side); one may fall outside
        assert sum(inside) >= len(inside) - 1, (band, results)
    finally:
        agent.kill()
