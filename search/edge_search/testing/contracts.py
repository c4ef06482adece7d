"""Contract tests every implementation of a seam must pass: `DeviceContract`, `TransformContract`,
`TaskContract` (like `optuna.testing.pytest_samplers`).

An implementation opts in by subclassing the contract in a test module and providing its one
fixture; pytest then runs every ``test_*`` method of the contract against it:

    from edge_search.testing.contracts import DeviceContract

    class TestMyDevice(DeviceContract):
        @pytest.fixture()
        def device(self) -> Device:
            return MyDevice(get_profile("host"))

Fixtures the contracts provide (`contract_model`, `contract_deploy`, ...) can be overridden the
same way when an implementation needs other inputs. Needs pytest (``pip install 'edge-search[dev]'``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_search.config import DeployConfig
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError
from edge_search.tasks.base import ModelArtifact, Task
from edge_search.transforms.base import Transform


def small_conv_model(path: Path, *, side: int = 8, channels: int = 4, classes: int = 3, seed: int = 0) -> Path:
    """A small fp32 classifier with a dynamic batch: x (N,1,side,side) -> Conv3x3 -> Relu -> Conv1x1
    -> GlobalAveragePool -> Flatten -> Gemm -> logits (N,classes). Conv, Gemm and a MatMul-free graph
    exercise the int8, pruning and fp16 paths; a few KB."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    c = channels
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "small_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, side, side])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [init("w1", c, 1, 3, 3), init("b1", c), init("w2", c, c, 1, 1), init("b2", c),
         init("w3", classes, c), init("b3", classes)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _run(path: Path, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, dict(feeds))]


# --- Device --------------------------------------------------------------------------------------


class DeviceContract:
    """What every `Device` does. Provide the `device` fixture (a fresh, unused device).

    `contract_request` is a quick measurement of a small model; override it (or `contract_model`)
    when a device needs another model or knobs.
    """

    @pytest.fixture()
    def device(self) -> Device:
        raise NotImplementedError("a DeviceContract subclass provides the `device` fixture")

    @pytest.fixture()
    def contract_model(self, tmp_path: Path) -> Path:
        return small_conv_model(tmp_path / "contract.onnx")

    @pytest.fixture()
    def contract_request(self, contract_model: Path) -> MeasureRequest:
        return MeasureRequest(model_path=contract_model, shapes={"x": (1, 1, 8, 8)}, precision_target=0.2,
                              max_time_s=0.3, min_samples=5, warmup_min_runs=2, warmup_min_s=0.05)

    def test_measure_returns_latency_stats_of_its_source(self, device: Device,
                                                         contract_request: MeasureRequest) -> None:
        with device:
            stats = device.measure(contract_request)
        assert isinstance(stats, LatencyStats)
        assert stats.device == device.name
        assert stats.source == device.latency_source
        assert stats.median_ms > 0 and math.isfinite(stats.median_ms)
        assert stats.ci_low_ms <= stats.median_ms <= stats.ci_high_ms
        assert stats.median_ms <= stats.p99_ms or stats.source == "emulated"
        if stats.source == "measured":
            assert len(stats.samples_ms) >= 1
        assert LatencyStats.from_json(stats.to_json()) == stats

    def test_missing_model_is_an_input_error(self, device: Device, contract_request: MeasureRequest,
                                             tmp_path: Path) -> None:
        missing = contract_request.model_copy(update={"model_path": tmp_path / "no-such-model.onnx"})
        with device, pytest.raises(InputError):
            device.measure(missing)

    def test_context_manager_returns_the_device_and_close_is_idempotent(self, device: Device) -> None:
        with device as entered:
            assert entered is device
        device.close()  # closing twice is harmless
        assert isinstance(device.name, str) and device.name
        assert device.latency_source in ("measured", "emulated")


# --- Transform -----------------------------------------------------------------------------------


class TransformContract:
    """What every `Transform` does. Provide `transform` and `contract_deploy` (knobs it applies to).

    `contract_task` gives the calibration and evaluation data (a task over `contract_model`);
    override both when a transform needs another model (weight-only quantisation needs MatMuls).
    """

    @pytest.fixture()
    def transform(self) -> Transform:
        raise NotImplementedError("a TransformContract subclass provides the `transform` fixture")

    @pytest.fixture()
    def contract_deploy(self) -> DeployConfig:
        raise NotImplementedError("a TransformContract subclass provides `contract_deploy`")

    @pytest.fixture()
    def contract_model(self, tmp_path: Path) -> Path:
        return small_conv_model(tmp_path / "contract.onnx")

    @pytest.fixture()
    def contract_task(self, contract_model: Path, tmp_path: Path) -> Task:
        from edge_search.tasks.onnx_model import OnnxModelTask

        x = np.random.default_rng(1).standard_normal((24, 1, 8, 8)).astype(np.float32)
        np.savez(tmp_path / "contract-data.npz", x=x)
        return OnnxModelTask(model=contract_model, data=tmp_path / "contract-data.npz")

    def test_default_knobs_do_not_ask_for_it(self, transform: Transform) -> None:
        assert not transform.applies(DeployConfig())

    def test_apply_writes_a_model_onnx_runtime_runs_and_leaves_the_source(
            self, transform: Transform, contract_deploy: DeployConfig, contract_model: Path,
            contract_task: Task, tmp_path: Path) -> None:
        assert transform.applies(contract_deploy)
        before = contract_model.read_bytes()
        dst = tmp_path / "out" / "transformed.onnx"
        transform.apply(contract_model, dst, contract_deploy, contract_task)
        assert contract_model.read_bytes() == before
        onnx.load(str(dst))  # a model file (ORT's fp16 converter writes graphs onnx.checker would reject)
        feed = next(iter(contract_task.calibration_batches(2, 2)))
        want, got = _run(contract_model, feed), _run(dst, feed)
        assert [o.shape for o in got] == [o.shape for o in want]
        assert all(np.isfinite(o).all() for o in got)

    def test_key_knobs_are_deploy_knobs_as_json(self, transform: Transform,
                                                contract_deploy: DeployConfig) -> None:
        knobs = transform.key_knobs(contract_deploy)
        assert json.loads(json.dumps(knobs, sort_keys=True)) == knobs
        assert knobs == transform.key_knobs(contract_deploy)
        assert set(knobs) <= set(DeployConfig.model_fields) | set(transform.key_extras)
        assert transform.name and isinstance(transform.name, str)


# --- Task ----------------------------------------------------------------------------------------


class TaskContract:
    """What every `Task` does. Provide the `task` fixture; `train_params` keeps training short."""

    @pytest.fixture()
    def task(self) -> Task:
        raise NotImplementedError("a TaskContract subclass provides the `task` fixture")

    @pytest.fixture()
    def train_params(self) -> dict[str, Any]:
        return {}

    @pytest.fixture()
    def trained(self, task: Task, train_params: dict[str, Any], tmp_path: Path) -> Iterator[ModelArtifact]:
        yield task.train(task.resolve_params(train_params), tmp_path / "train", 0)

    def test_describes_itself(self, task: Task) -> None:
        assert task.name and isinstance(task.name, str)
        assert task.version and isinstance(task.version, str)
        assert isinstance(task.supports_input_resolution, bool)
        assert isinstance(task.supports_early_stop, bool) and isinstance(task.can_train, bool)
        assert task.resolve_params({}) == dict(task.train_knobs)
        with pytest.raises(KeyError):
            task.resolve_params({"no_such_knob_": 1})

    def test_trains_to_an_onnx_model_it_can_evaluate(self, task: Task, trained: ModelArtifact,
                                                     train_params: dict[str, Any]) -> None:
        assert trained.onnx_path.is_file()
        onnx.checker.check_model(str(trained.onnx_path))
        bound = task.bind_trial(trained, task.resolve_params(train_params), DeployConfig())
        metrics = bound.evaluate(trained.onnx_path, 1)
        assert bound.primary_metric in metrics
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())

    def test_shapes_and_calibration_feeds_fit_the_model(self, task: Task, trained: ModelArtifact,
                                                        train_params: dict[str, Any]) -> None:
        bound = task.bind_trial(trained, task.resolve_params(train_params), DeployConfig())
        shapes = bound.input_shapes(2)
        inputs = {i.name for i in onnx.load(str(trained.onnx_path)).graph.input}
        assert set(shapes) <= inputs and all(s[0] == 2 for s in shapes.values())
        feeds = list(bound.calibration_batches(4, 2))
        assert feeds and sum(len(next(iter(f.values()))) for f in feeds) <= 4
        outputs = _run(trained.onnx_path, feeds[0])
        assert outputs and all(np.isfinite(o).all() for o in outputs)
