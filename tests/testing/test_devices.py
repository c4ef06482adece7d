"""`FunctionDevice`, the public test double: a real `Device` (it passes the device contract)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_search.devices.base import Device, MeasureRequest, NodeTiming
from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError
from edge_search.testing import FunctionDevice
from edge_search.testing.contracts import DeviceContract


def _stats(request: MeasureRequest) -> LatencyStats:
    return LatencyStats.from_samples([1.0, 1.2, 0.9, 1.1], device="fake")


class TestFunctionDeviceContract(DeviceContract):
    @pytest.fixture()
    def device(self) -> Device:
        return FunctionDevice(_stats, name="fake")


def test_answers_with_the_handler_and_records_requests(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not measured")
    device = FunctionDevice(_stats, name="fake", latency_source="emulated")
    request = MeasureRequest(model_path=model)
    with device as d:
        assert d.measure(request).median_ms == pytest.approx(1.05)
    assert device.requests == [request] and device.closed == 1
    assert device.latency_source == "emulated"
    with pytest.raises(NotImplementedError, match="cannot profile"):
        device.profile_nodes(request)


def test_profiles_nodes_with_its_node_handler(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    timing = NodeTiming(name="conv", op_type="Conv", mean_us=3.0, count=5)
    device = FunctionDevice(_stats, nodes=lambda r, runs: [timing] * runs)
    assert device.profile_nodes(MeasureRequest(model_path=model), runs=2) == [timing, timing]
    assert len(device.profiled) == 1 and device.requests == []
    with pytest.raises(InputError, match="no such model file"):
        device.profile_nodes(MeasureRequest(model_path=tmp_path / "missing.onnx"))
