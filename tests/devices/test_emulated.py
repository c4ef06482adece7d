"""EmulatedDevice and the graph estimate: shape of the prediction, interval, threads, memory, GPU path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_search.devices.base import Device, MeasureRequest, NodeTiming, SessionKnobs
from edge_search.devices.emulated import EmulatedDevice
from edge_search.devices.emulation.carry import estimate_graph
from edge_search.devices.emulation.opclass import graph_costs
from edge_search.devices.profile import get_profile, parse_profile
from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError
from edge_search.testing import FunctionDevice
from edge_search.testing.contracts import DeviceContract
from tests.devices.tiny_conv import tiny_conv

NODE_US = {"conv1": 400.0, "dw": 100.0, "pw": 200.0, "gap": 20.0, "fc": 5.0}
"""Host per-node times (µs) of `tiny_conv`'s nodes the fake host reports."""


def fake_host(peak_mb: float = 120.0) -> FunctionDevice:
    """Stands in for the host `LocalDevice`: fixed per-node times, a fixed peak memory; it records
    what it was asked (`profiled`, `requests`)."""

    def nodes(request: MeasureRequest, runs: int) -> list[NodeTiming]:
        return [NodeTiming(name=n, op_type="Gemm" if n == "fc" else "Conv" if n != "gap" else "GlobalAveragePool",
                           mean_us=t, count=runs) for n, t in NODE_US.items()]

    return FunctionDevice(lambda r: LatencyStats.from_samples([1.0, 1.1, 1.2], device="host", peak_memory_mb=peak_mb),
                          name="host", nodes=nodes, profile=get_profile("host"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_conv(tmp_path_factory.mktemp("m") / "tiny.onnx")


def _req(
    model: Path, threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> MeasureRequest:
    return MeasureRequest(
        model_path=model, session=SessionKnobs(intra_op_threads=threads, providers=providers)
    )


def test_prediction_is_latency_stats_with_interval_and_breakdown(model: Path) -> None:
    host = fake_host()
    dev = EmulatedDevice(get_profile("raspberry-pi-4"), host=host)
    s = dev.measure(_req(model))
    assert s.source == "emulated" and s.stop_reason == "predicted" and s.samples_ms == ()
    assert s.ci_low_ms < s.median_ms < s.ci_high_ms
    band = s.extra["error_band"]
    assert s.ci_high_ms == pytest.approx(s.median_ms * (1 + band))
    assert s.extra["profile"] == "raspberry-pi-4" and s.extra["profile_version"]
    assert "ONNX Runtime" in s.extra["calibration_note"] and s.extra["method"] == "physics"
    assert {"conv3", "depthwise", "pointwise", "gemm", "nodes"} <= set(s.extra["breakdown"])
    assert s.extra["fits_memory"] is True and s.peak_memory_mb == 120.0
    assert s.median_ms > 0.725  # a Pi 4 is slower than this host
    assert any("tail latency" in w for w in s.warnings)
    assert dev.latency_source == "emulated"


def test_host_is_profiled_at_one_thread_and_target_threads_beyond_host_cores_are_emulated(
    model: Path,
) -> None:
    host = fake_host()
    dev = EmulatedDevice(get_profile("raspberry-pi-4"), host=host)
    one = dev.measure(_req(model, 1))
    four = dev.measure(_req(model, 4))  # the host has 2 cores; the Pi 4 has 4
    assert host.profiled == []  # the physics model reads the graph; the host only measures memory
    assert all(r.session.intra_op_threads == 1 for r in host.requests)
    assert len(host.requests) == 1  # memory measured once, cached by model hash
    assert four.median_ms < one.median_ms
    assert four.knobs["intra_op_threads"] == 4 and four.extra["threads"] == 4
    with pytest.raises(InputError, match="exceed the 4 cores"):
        dev.measure(_req(model, 5))


def test_memory_that_does_not_fit_is_flagged(model: Path) -> None:
    small = parse_profile(
        {
            "name": "tiny-board",
            "cpu": {"architecture": "aarch64", "core_type": "A53", "cores": 4, "clock_ghz": 1},
            "memory": {"ram_mb": 512, "bandwidth_gb_s": 4, "reserve_mb": 448},
            "latency": {"method": "emulated"},
            "calibration": get_profile("raspberry-pi-4").calibration.model_dump(),
        },
        "test",
    )
    s = EmulatedDevice(small, host=fake_host(peak_mb=100.0)).measure(_req(model))
    assert s.extra["fits_memory"] is False and s.extra["device_ram_mb"] == 512
    assert any("infeasible" in w for w in s.warnings)


def test_gpu_path_when_a_gpu_provider_is_asked(model: Path) -> None:
    dev = EmulatedDevice(get_profile("jetson-nano"), host=fake_host())
    gpu = dev.measure(_req(model, providers=("CUDAExecutionProvider",)))
    cpu = dev.measure(_req(model))
    assert gpu.extra["path"] == "gpu" and cpu.extra["path"] == "cpu"
    assert gpu.extra["error_band"] >= 0.5
    with pytest.raises(InputError, match="not offered"):
        EmulatedDevice(get_profile("raspberry-pi-4"), host=fake_host()).measure(
            _req(model, providers=("CUDAExecutionProvider",))
        )


def test_graph_estimate_is_emulated_and_scales_with_work(model: Path, tmp_path: Path) -> None:
    big = tiny_conv(tmp_path / "big.onnx", size=64)
    pi = get_profile("raspberry-pi-4")
    a = estimate_graph(model, pi)
    b = estimate_graph(big, pi)
    assert a.source == "emulated" and a.extra["method"] == "graph" and a.stop_reason == "predicted"
    assert b.median_ms > a.median_ms > 0
    assert a.ci_low_ms < a.median_ms < a.ci_high_ms


def test_node_classes_of_the_tiny_model(model: Path) -> None:
    classes = {c.name: (c.op_class, c.precision) for c in graph_costs(model)}
    assert classes["conv1"] == ("conv_kxk", "fp32")
    assert classes["dw"] == ("depthwise", "fp32")
    assert classes["pw"] == ("pointwise", "fp32")
    assert classes["fc"] == ("gemm", "fp32")
    assert classes["relu1"][0] == "elementwise" and classes["gap"][0] == "other"


def test_end_to_end_with_the_real_host(model: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    s = EmulatedDevice(get_profile("raspberry-pi-5"), profile_runs=3).measure(_req(model, 4))
    assert s.source == "emulated" and s.median_ms > 0 and s.peak_memory_mb > 0
    assert s.extra["fits_memory"] is True and s.extra["method"] == "physics"


class TestEmulatedDeviceContract(DeviceContract):
    """With the real host: the model is profiled in a pinned worker on this machine."""

    @pytest.fixture()
    def device(self) -> Device:
        return EmulatedDevice(get_profile("raspberry-pi-4"), measure_memory=False)


def test_host_mismatch_compares_like_with_like() -> None:
    """The reference host string (CPU + ORT version) is compared with the same string for this machine."""
    from edge_search.devices.emulated import host_mismatch
    from edge_search.devices.worker.probes import host_id

    here = host_id()
    assert " / onnxruntime " in here
    assert host_mismatch(here) is None  # calibrated here: no warning (it used to warn on every prediction)
    assert host_mismatch("") is None
    other = host_mismatch("Some Other CPU / onnxruntime 1.0.0", this_host=here)
    assert other is not None and "Some Other CPU / onnxruntime 1.0.0" in other and here in other
    same_cpu_other_ort = host_mismatch(here.split(" / ")[0] + " / onnxruntime 0.0.1")
    assert same_cpu_other_ort is not None


def test_fp16_on_the_gpu_path_is_carried_with_the_gpu_fp16_rates(model: Path, tmp_path: Path) -> None:
    """An fp16 model is profiled as its float32 twin (this host has no fp16 arithmetic) and every class
    is carried with the GPU's fp16 rate, not with fp32 (CPU or GPU) rates."""
    import onnx

    from edge_search.devices.emulation.opclass import class_group
    from edge_search.transforms.precision import convert_fp16

    fp16 = tmp_path / "tiny-fp16.onnx"
    onnx.save(convert_fp16(onnx.load(str(model))), str(fp16))
    host = fake_host()
    data = get_profile("jetson-nano").model_dump(mode="json")
    rates = {"gpu.overhead_ms": 1.0, "gpu.rate.fp16.compute": 300.0, "gpu.rate.fp16.memory": 40.0,
             "gpu.rate.fp32.compute": 150.0, "gpu.rate.fp32.memory": 30.0, "rate.fp32.compute": 3.0,
             "rate.fp32.memory": 0.5}
    data["calibration"] = {"source": "test: host-carry rates (no physics block)",
                           "params": {k: {"value": v, "source": "test"} for k, v in rates.items()}}
    nano = parse_profile(data, "test")
    s = EmulatedDevice(nano, host=host).measure(
        _req(fp16, providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    assert s.extra["path"] == "gpu" and s.source == "emulated"
    assert host.profiled and all(Path(r.model_path) != fp16 for r in host.profiled)  # the twin was profiled
    breakdown = s.extra["breakdown"]
    assert breakdown and all(k.startswith("fp16.") for k in breakdown)
    host_cal = get_profile("host").calibration
    for key, row in breakdown.items():
        op_class = key.split(".", 1)[1]
        gpu_rate = nano.calibration.rate("fp16", op_class, class_group(op_class), gpu=True)
        host_rate = host_cal.rate("fp32", op_class, class_group(op_class))
        assert gpu_rate is not None and host_rate is not None
        assert row["ratio"] == pytest.approx(host_rate / gpu_rate)
    assert not any("fp32 rates" in w for w in s.warnings)
    # the same graph in fp32 on the GPU path: the same host profile, carried with the slower fp32 rates
    f32 = EmulatedDevice(nano, host=fake_host()).measure(
        _req(model, providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    assert all(k.startswith("fp32.") for k in f32.extra["breakdown"])
    assert s.median_ms < f32.median_ms
