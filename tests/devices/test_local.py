"""LocalDevice with real worker processes and real ONNX Runtime sessions; inputs; the worker's loops."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from edge_search.devices import DEVICE_METHODS, create_device
from edge_search.devices.base import Device, MeasureRequest, NodeTiming, SessionKnobs
from edge_search.devices.inputs import InputSpec, build_feeds, parse_shape_arg, specs_from_onnx
from edge_search.devices.lease import FileLease
from edge_search.devices.local import LocalDevice, allowed_cores, training_cores
from edge_search.devices.profile import DeviceProfile, LatencySpec, get_profile
from edge_search.devices.stats import LatencyStats
from edge_search.devices.worker.engine import parse_profile_trace, repeat_until_precise, warm_up
from edge_search.devices.worker.probes import others_pct, read_cpu_times, steal_pct
from edge_search.errors import EdgeSearchError, InputError
from edge_search.testing.contracts import DeviceContract

FAST = {"warmup_min_s": 0.05, "max_time_s": 2.0}


def _profile(cores: tuple[int, ...] | None = None) -> DeviceProfile:
    host = get_profile("host")
    return host.model_copy(update={"latency": LatencySpec(method="local", cores=cores)})


def _device(cores: tuple[int, ...] | None = None, **kw: object) -> LocalDevice:
    return LocalDevice(_profile(cores), warmup_max_s=0.5, min_measure_s=0.1, **kw)  # type: ignore[arg-type]


def _req(path: Path, **kw: object) -> MeasureRequest:
    return MeasureRequest(model_path=path, **{**FAST, **kw})


# --- real measurements -----------------------------------------------------------------------


def test_measure_static_model(tmp_path: Path, make_gemm_chain: Callable[..., Path]) -> None:
    model = make_gemm_chain(tmp_path / "m.onnx", layers=4, width=512, batch=16)  # 4 MB of weights
    dev = _device()
    before = time.time()
    s = dev.measure(_req(model, session=SessionKnobs(intra_op_threads=1), precision_target=0.05))
    after = time.time()
    assert isinstance(s, LatencyStats) and s.source == "measured" and s.device == "host"
    n = len(s.samples_ms)
    assert n >= 20 and s.stop_reason in ("precision", "time_cap")
    assert s.ci_low_ms <= s.median_ms <= s.ci_high_ms
    used = [p for p in s.extra["processes"] if p["used"]]
    assert len(used) == 2 and s.extra["tries"] == 2 + s.extra["discarded"]  # two worker processes by default
    assert s.median_ms == pytest.approx(float(np.exp(np.mean(np.log([p["median_ms"] for p in used])))))
    assert all(s.ci_low_ms <= p["median_ms"] <= s.ci_high_ms for p in used)
    assert s.warmup_runs >= 5 and s.warmup_ms >= 50
    assert s.session_load_ms > 0 and s.first_run_ms > 0
    assert s.peak_memory_mb > 4.0 * 0.9  # the weights alone are 4 MB
    assert s.host.cores_used == tuple(sorted(os.sched_getaffinity(0)))
    assert s.host.cpu_model and s.host.ort_version
    assert s.knobs["intra_op_threads"] == 1 and s.knobs["allow_spinning"] is True
    assert before <= s.started_at <= s.extra["measure_started_at"] < s.extra["measure_ended_at"] <= s.ended_at
    assert s.ended_at <= after and s.lease_wait_s >= 0
    assert s.extra["input_shapes"] == {"x": [16, 512]}
    # the process's CPU time per run: never much above the wall time of a run at one thread
    assert 0 < s.extra["cpu_ms_per_run"] <= 1.5 * s.mean_ms + 1.0
    if s.stop_reason == "precision":  # each process reached the precision target on its own samples
        assert all((p["ci_high_ms"] - p["ci_low_ms"]) / 2 <= 0.05 * p["median_ms"] for p in used)
    assert LatencyStats.from_json(s.to_json()) == s


def test_measure_pins_to_profile_cores(models: dict[str, Path]) -> None:
    core = max(os.sched_getaffinity(0))
    s = _device(cores=(core,)).measure(_req(models["static"]))
    assert s.host.cores_used == (core,)


def test_time_cap_is_recorded(models: dict[str, Path]) -> None:
    s = _device().measure(_req(models["static"], precision_target=1e-9, max_time_s=0.3))
    assert s.stop_reason == "time_cap"
    assert any("precision target not reached" in w for w in s.warnings)
    assert 0.25 <= s.extra["measure_s"] < 1.5


def test_dynamic_batch_with_shape(models: dict[str, Path]) -> None:
    s = _device().measure(_req(models["dynamic"], shapes={"x": (3, 64)}))
    assert s.extra["input_shapes"] == {"x": [3, 64]}
    assert s.batch_size == 3


@pytest.mark.parametrize(("key", "shapes", "match"), [
    ("dynamic", {}, r"input 'x' has a dynamic dimension 0 \('batch'\).*--shape x=N,64"),
    ("dynamic", {"x": (3, 65)}, r"dimension 1 is fixed to 64"),
    ("dynamic", {"y": (3, 64)}, r"unknown input\(s\) y"),
    ("corrupt", {}, r"cannot load ONNX model \(InvalidProtobuf\)"),
])
def test_bad_models_raise_input_error(models: dict[str, Path], key: str, shapes: dict[str, tuple[int, ...]],
                                      match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        _device().measure(_req(models[key], shapes=shapes))
    assert "\n" not in str(info.value)


def test_rejected_before_any_worker(tmp_path: Path, models: dict[str, Path]) -> None:
    dev = _device(cores=(min(os.sched_getaffinity(0)),))
    with pytest.raises(InputError, match="intra-op threads 2 exceed the 1 core"):
        dev.measure(_req(models["static"], session=SessionKnobs(intra_op_threads=2)))
    with pytest.raises(InputError, match="no such model file"):
        dev.measure(_req(tmp_path / "missing.onnx"))
    with pytest.raises(InputError, match="not all available"):
        LocalDevice(_profile(cores=(4096,)))


def test_worker_timeout_kills_it(models: dict[str, Path]) -> None:
    dev = _device(worker_timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(EdgeSearchError, match=r"did not finish within 0\.3 s and was killed"):
        dev.measure(_req(models["static"]))
    assert time.monotonic() - t0 < 10


def test_concurrent_measurements_do_not_overlap(models: dict[str, Path]) -> None:
    results: list[LatencyStats] = []

    def one() -> None:
        results.append(_device().measure(_req(models["static"], max_time_s=0.3)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    a, b = sorted(results, key=lambda s: s.started_at)
    assert a.ended_at <= b.started_at
    assert b.lease_wait_s > 0.2  # the second one queued behind the whole first worker


FROZEN_MEASURER = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.WARNING)
from edge_search.devices.base import MeasureRequest
from edge_search.devices.lease import FileLease
from edge_search.devices.local import LocalDevice
from edge_search.devices.profile import get_profile
dev = LocalDevice(get_profile("host"), lease=FileLease(sys.argv[1], ttl_s=1.0), warmup_max_s=0.5, min_measure_s=4.0)
s = dev.measure(MeasureRequest(model_path=Path(sys.argv[2]), warmup_min_s=0.05, max_time_s=4.0, precision_target=1e-6))
print(json.dumps({"started_at": s.started_at, "ended_at": s.ended_at}))
"""


def test_stopped_measurer_loses_the_device_and_measures_again(tmp_path: Path, models: dict[str, Path]) -> None:
    """A measuring process stopped (SIGSTOP) while its worker runs: the lease lapses after the ttl,
    the orphaned worker stops itself, another process measures; once continued, the first process
    discards its measurement and measures again. Kept intervals never overlap."""
    lease = FileLease(tmp_path / "locks", ttl_s=1.0)
    name = f"local@{socket.gethostname()}"
    first = subprocess.Popen([sys.executable, "-c", FROZEN_MEASURER, str(tmp_path / "locks"), str(models["static"])],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (lease.holder(name) or {}).get("workers"):  # its worker is running under the lease
        assert time.monotonic() < deadline and first.poll() is None, "the first process never measured"
        time.sleep(0.05)
    [[worker_pid, _]] = lease.holder(name)["workers"]  # type: ignore[index]
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = LocalDevice(_profile(), lease=FileLease(tmp_path / "locks", ttl_s=1.0), warmup_max_s=0.5,
                             min_measure_s=0.1).measure(_req(models["static"], max_time_s=0.5))
        assert second.lease_wait_s > 0.5  # it waited for the lapse, not for the 4 s measurement
        # the orphaned worker stopped itself when the lease went (a zombie until its parent reaps it)
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    kept = json.loads(out)
    assert "discarded" in err and "lease lost" in err
    assert kept["started_at"] >= second.ended_at  # measured again, after the other one


def test_profile_nodes(models: dict[str, Path]) -> None:
    req = _req(models["static"], session=SessionKnobs(graph_optimization="disable"))
    nodes = _device().profile_nodes(req, runs=7)
    assert all(isinstance(n, NodeTiming) for n in nodes)
    by_name = {n.name: n for n in nodes}
    assert set(by_name) == {f"gemm{i}" for i in range(6)} | {f"relu{i}" for i in range(6)}
    assert all(n.count == 7 and n.mean_us > 0 for n in nodes)
    assert {n.op_type for n in nodes} == {"Gemm", "Relu"}
    assert all(n.provider == "CPUExecutionProvider" for n in nodes)
    assert by_name["gemm0"].mean_us > by_name["relu0"].mean_us  # 16x256x256 MACs vs 4k max()


# --- registry and cores ----------------------------------------------------------------------


def test_create_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(create_device(_profile()), LocalDevice)
    monkeypatch.setitem(DEVICE_METHODS, "local", "edge_search.devices.not_written_yet:Nothing")
    with pytest.raises(EdgeSearchError, match="latency method 'local' is not available"):
        create_device(_profile())


def test_core_sets() -> None:
    allc = tuple(sorted(os.sched_getaffinity(0)))
    assert allowed_cores(_profile()) == allc
    assert training_cores(_profile()) == allc
    if len(allc) > 1:
        assert training_cores(_profile(cores=(allc[-1],))) == allc[:-1]


# --- inputs ----------------------------------------------------------------------------------


def test_build_feeds_dtypes_and_seed() -> None:
    types = ["tensor(float)", "tensor(float16)", "tensor(int64)", "tensor(int32)", "tensor(uint8)",
             "tensor(bool)"]
    specs = [InputSpec(f"i{k}", t, (2, "n")) for k, t in enumerate(types)]
    feeds = build_feeds(specs, {s.name: (2, 3) for s in specs}, seed=1)
    assert [feeds[s.name].dtype for s in specs] == [np.float32, np.float16, np.int64, np.int32, np.uint8,
                                                     np.bool_]
    assert all(f.shape == (2, 3) for f in feeds.values())
    again = build_feeds(specs, {s.name: (2, 3) for s in specs}, seed=1)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    with pytest.raises(InputError, match="input 'i0' has a dynamic dimension 1 \\('n'\\)"):
        build_feeds(specs[:1])
    with pytest.raises(InputError, match="rank 1"):
        build_feeds(specs[:1], {"i0": (6,)})
    with pytest.raises(InputError, match="cannot generate"):
        build_feeds([InputSpec("s", "tensor(string)", (1,))])


def test_specs_from_onnx(models: dict[str, Path]) -> None:
    assert specs_from_onnx(models["dynamic"]) == [InputSpec("x", "tensor(float)", ("batch", 64))]
    assert specs_from_onnx(models["static"])[0].is_static
    with pytest.raises(InputError, match="not a valid ONNX model"):
        specs_from_onnx(models["corrupt"])


@pytest.mark.parametrize(("text", "expected"), [("x=1,3,224,224", ("x", (1, 3, 224, 224))),
                                                ("in:0=2x8", ("in:0", (2, 8)))])
def test_parse_shape_arg(text: str, expected: tuple[str, tuple[int, ...]]) -> None:
    assert parse_shape_arg(text) == expected


@pytest.mark.parametrize("text", ["x", "=1,2", "x=", "x=1,a", "x=0,3"])
def test_parse_shape_arg_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_shape_arg(text)


# --- the worker's loops, in process with a synthetic workload -----------------------------------


def _busy(us: float, jitter: float = 0.0, seed: int = 0) -> object:
    rng = np.random.default_rng(seed)

    def run() -> None:
        end = time.perf_counter_ns() + int(us * 1e3 * (1 + jitter * rng.random()))
        while time.perf_counter_ns() < end:
            pass

    return run


def test_repeat_until_precise_stops_on_precision_and_on_cap() -> None:
    samples, reason, secs = repeat_until_precise(_busy(200, 0.05), precision_target=0.02, max_time_s=5,  # type: ignore[arg-type]
                                                 min_samples=20, max_samples=100_000)
    assert reason == "precision" and len(samples) >= 20 and secs < 5
    samples, reason, secs = repeat_until_precise(_busy(200, 0.5), precision_target=1e-9, max_time_s=0.2,  # type: ignore[arg-type]
                                                 min_samples=20, max_samples=100_000)
    assert reason == "time_cap" and 0.2 <= secs < 0.5
    samples, reason, _ = repeat_until_precise(_busy(50, 0.5), precision_target=1e-9, max_time_s=5,  # type: ignore[arg-type]
                                              min_samples=20, max_samples=64)
    assert reason == "max_samples" and len(samples) == 64


def test_warm_up_honours_count_time_and_cap() -> None:
    runs, secs, how = warm_up(_busy(100), 100_000, min_runs=50, min_s=0.05, max_s=1.0, drift=0.5)  # type: ignore[arg-type]
    assert runs >= 50 and secs >= 0.05 and how == "steady"
    state = {"n": 0}

    def slowing() -> None:  # never steady: each run 20 % slower than the last window
        state["n"] += 1
        end = time.perf_counter_ns() + int(20_000 * 1.01 ** state["n"])
        while time.perf_counter_ns() < end:
            pass

    runs, secs, how = warm_up(slowing, 20_000, min_runs=5, min_s=0.01, max_s=0.3, drift=0.001)
    assert how == "cap" and 0.3 <= secs < 0.6


def test_parse_profile_trace_skips_warmup() -> None:
    trace = []
    for r in range(5):  # 5 runs; the first 2 are warm-up and slower
        ts = r * 1000
        trace.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": 900})
        trace.append({"cat": "Node", "name": "conv_kernel_time", "ts": ts + 1, "dur": 500 if r < 2 else 100,
                      "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}})
        trace.append({"cat": "Node", "name": "conv_fence_before", "ts": ts + 1, "dur": 0, "args": {}})
    nodes = parse_profile_trace(trace, runs=3)
    assert nodes == [{"name": "conv", "op_type": "Conv", "provider": "CPUExecutionProvider",
                      "mean_us": 100.0, "min_us": 100.0, "count": 3}]


def test_parse_profile_trace_reports_the_fastest_execution() -> None:
    trace = []
    for r, dur in enumerate((100, 400, 110)):  # the second run was preempted
        trace.append({"cat": "Session", "name": "model_run", "ts": r * 1000, "dur": 900})
        trace.append({"cat": "Node", "name": "conv_kernel_time", "ts": r * 1000 + 1, "dur": dur,
                      "args": {"op_name": "Conv"}})
    (node,) = parse_profile_trace(trace, runs=3)
    assert node["mean_us"] == pytest.approx(610 / 3)
    assert node["min_us"] == 100.0


def test_steal_and_contention_from_cpu_times() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    before = {0: (10, 1000, 400), 1: (0, 1000, 100)}
    after = {0: (20, 1000 + hz, 400 + hz), 1: (0, 1000 + hz, 100 + hz // 2)}  # 1 s on 2 cores
    assert steal_pct(before, after) == pytest.approx(100 * 10 / (2 * hz))
    # 1.5 s of busy core time, of which 1 s was this process: the rest (0.5 s of 2 s) was others'.
    assert others_pct(before, after, own_cpu_s=1.0) == pytest.approx(25.0, abs=0.5)
    assert others_pct(before, after, own_cpu_s=5.0) == 0.0
    assert steal_pct({}, after) is None and others_pct({}, after, 0.0) is None
    assert set(read_cpu_times([0])) <= {0}


class TestLocalDeviceContract(DeviceContract):
    @pytest.fixture()
    def device(self) -> Device:
        return LocalDevice(get_profile("host"))
