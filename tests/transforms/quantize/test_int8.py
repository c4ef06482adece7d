"""QuantizeTransform: real int8 quantisation of a trained digits-cnn with ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from edge_search.config import DeployConfig
from edge_search.tasks.base import ModelArtifact
from edge_search.tasks.digits_cnn import DigitsCnnTask
from edge_search.testing.contracts import TransformContract
from edge_search.transforms import MagnitudePruneTransform, QuantizeTransform, deploy_transforms
from edge_search.transforms.base import Transform
from edge_search.transforms.quantize import ort as quantize_module
from edge_search.transforms.quantize.calibration import FeedReader, batch_plan, calibration_samples

MAX_ACCURACY_DROP = 0.03


@pytest.fixture(scope="module")
def task() -> DigitsCnnTask:
    return DigitsCnnTask()


@pytest.fixture(scope="module")
def fp32(task: DigitsCnnTask, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    return task.train({"epochs": 3}, tmp_path_factory.mktemp("fp32"), seed=0)


@pytest.fixture(scope="module")
def fp32_accuracy(task: DigitsCnnTask, fp32: ModelArtifact) -> float:
    return task.evaluate(fp32.onnx_path)["accuracy"]


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


QDQ = {"QuantizeLinear", "DequantizeLinear"}
CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"precision": "int8-dynamic"}, {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}),
    ({"precision": "int8-dynamic", "per_channel": True, "reduce_range": True}, {"ConvInteger"}),
    ({"precision": "int8-static", "calibration_method": "minmax"}, QDQ),
    ({"precision": "int8-static", "calibration_method": "entropy"}, QDQ),
    ({"precision": "int8-static", "calibration_method": "percentile"}, QDQ),
    ({"precision": "int8-static", "per_channel": True, "calibration_size": 64}, QDQ),
    ({"precision": "int8-static", "quant_format": "qoperator"}, {"QLinearConv", "QuantizeLinear"}),
]


@pytest.mark.parametrize(("knobs", "expected_ops"), CASES, ids=lambda v: "-".join(map(str, v.values()))
                         if isinstance(v, dict) else None)
def test_quantised_model_is_int8_smaller_and_accurate(
        task: DigitsCnnTask, fp32: ModelArtifact, fp32_accuracy: float, tmp_path: Path,
        knobs: dict[str, Any], expected_ops: set[str]) -> None:
    deploy = DeployConfig(**knobs)
    dst = tmp_path / "int8.onnx"
    QuantizeTransform().apply(fp32.onnx_path, dst, deploy, task)
    onnx.checker.check_model(onnx.load(str(dst)))
    assert expected_ops <= _ops(dst)
    if deploy.quant_format == "qoperator":
        assert "Conv" not in _ops(dst)
    assert dst.stat().st_size < 0.6 * fp32.onnx_path.stat().st_size
    accuracy = task.evaluate(dst, batch_size=1)["accuracy"]
    assert accuracy >= fp32_accuracy - MAX_ACCURACY_DROP


def test_applies_only_to_int8() -> None:
    q = QuantizeTransform()
    assert not q.applies(DeployConfig())
    assert q.applies(DeployConfig(precision="int8-dynamic"))
    assert q.applies(DeployConfig(precision="int8-static"))


def test_static_qdq_uses_signed_activations_qoperator_unsigned(task: DigitsCnnTask, fp32: ModelArtifact,
                                                                tmp_path: Path) -> None:
    def input_zero_point_type(path: Path) -> int:
        model = onnx.load(str(path))
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        zp = next(i for i in model.graph.initializer if i.name == q.input[2])
        return int(zp.data_type)

    static = DeployConfig(precision="int8-static")
    QuantizeTransform().apply(fp32.onnx_path, tmp_path / "qdq.onnx", static, task)
    QuantizeTransform().apply(fp32.onnx_path, tmp_path / "qop.onnx",
                              DeployConfig(precision="int8-static", quant_format="qoperator"), task)
    assert input_zero_point_type(tmp_path / "qdq.onnx") == onnx.TensorProto.INT8
    assert input_zero_point_type(tmp_path / "qop.onnx") == onnx.TensorProto.UINT8


def test_preprocess_failure_falls_back_with_a_logged_reason(
        task: DigitsCnnTask, fp32: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime.quantization as ortq

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("symbolic shape inference failed")

    monkeypatch.setattr(ortq, "quant_pre_process", broken)
    with caplog.at_level(logging.WARNING, logger=quantize_module.__name__):
        QuantizeTransform().apply(fp32.onnx_path, tmp_path / "q.onnx", DeployConfig(precision="int8-static"),
                                  task)
    assert "symbolic shape inference failed" in caplog.text
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(tmp_path / "q.onnx")


def test_calibration_batches_are_equal_sized_and_rewind(task: DigitsCnnTask) -> None:
    """ORT's histogram collectors stack the batches: a short last batch used to crash them."""
    assert batch_plan(10, None) == (10, 10)
    assert batch_plan(50, None) == (10, 50)
    assert batch_plan(37, None) == (1, 37)
    assert batch_plan(10, 4) == (4, 8)  # a fixed batch drops the remainder
    data = calibration_samples(task, 10)
    reader = FeedReader(data, *batch_plan(10, 4))
    shapes = [feed["input"].shape[0] for feed in iter(reader.get_next, None)]
    assert shapes == [4, 4]
    reader.rewind()
    first = reader.get_next()
    assert first is not None
    np.testing.assert_array_equal(first["input"], data["input"][:4])


def test_deploy_transforms_order_and_prune_path() -> None:
    chain = deploy_transforms(DeployConfig(precision="int8-static", sparsity=0.5))
    assert [type(t) for t in chain] == [MagnitudePruneTransform, QuantizeTransform]
    assert [type(t) for t in deploy_transforms(DeployConfig(precision="int8-static", sparsity=0.5),
                                               task_prunes=True)] == [QuantizeTransform]
    assert deploy_transforms(DeployConfig()) == []


class TestQuantizeStaticContract(TransformContract):
    @pytest.fixture()
    def transform(self) -> Transform:
        return QuantizeTransform()

    @pytest.fixture()
    def contract_deploy(self) -> DeployConfig:
        return DeployConfig(precision="int8-static", calibration_size=8, per_channel=True)


class TestQuantizeDynamicContract(TestQuantizeStaticContract):
    @pytest.fixture()
    def contract_deploy(self) -> DeployConfig:
        return DeployConfig(precision="int8-dynamic")
