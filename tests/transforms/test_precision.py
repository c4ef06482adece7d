"""Precision transforms beyond int8 static/dynamic: fp16, weight-only int4/int8, and int8 op selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_search.config import DeployConfig, check_deploy
from edge_search.errors import InvalidConfig
from edge_search.tasks.base import Task
from edge_search.tasks.onnx_model import OnnxModelTask
from edge_search.testing.contracts import TransformContract
from edge_search.transforms import (
    Fp16Transform,
    QuantizeTransform,
    WeightOnlyQuantizeTransform,
    deploy_transforms,
)
from edge_search.transforms.base import Transform
from edge_search.transforms.quantize.ort import nodes_kept_fp32


def matmul_model(path: Path, k: int = 64, n: int = 32) -> Path:
    """x (batch, 8, k) -> MatMul W (k, n) -> Add b -> Relu -> MatMul W2 (n, 4): transformer-style MatMuls."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32) * 0.1, "b"),
             numpy_helper.from_array(rng.standard_normal((n, 4)).astype(np.float32) * 0.1, "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, k])
    graph = helper.make_graph(nodes, "mm", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


X = np.random.default_rng(1).standard_normal((2, 8, 64)).astype(np.float32)


def test_fp16_converts_weights_and_keeps_float32_io(tmp_path: Path) -> None:
    src = matmul_model(tmp_path / "m.onnx")
    deploy = DeployConfig(precision="fp16")
    assert [t.name for t in deploy_transforms(deploy)] == ["fp16"]
    Fp16Transform().apply(src, tmp_path / "h.onnx", deploy, task=None)  # type: ignore[arg-type]
    model = onnx.load(str(tmp_path / "h.onnx"))
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "edge_search.precision" in {p.key for p in model.metadata_props}
    np.testing.assert_allclose(run(tmp_path / "h.onnx", X), run(src, X), atol=5e-3)


def test_fp16_is_invalid_on_a_cpu_only_profile_with_the_reason() -> None:
    kw = {"device_cores": 2, "task_can_prune_channels": False, "task_can_finetune": False}
    with pytest.raises(InvalidConfig, match=r"not supported by the device .*CPU-only"):
        check_deploy(DeployConfig(precision="fp16"), device_precisions=("fp32", "int8"), **kw)  # type: ignore[arg-type]
    check_deploy(DeployConfig(precision="fp16"), device_precisions=("fp32", "fp16", "int8"), **kw)  # type: ignore[arg-type]
    # weight-only int4 keeps fp32 activations: valid wherever fp32 is
    check_deploy(DeployConfig(precision="int4-weight"), device_precisions=("fp32", "int8"), **kw)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match="input_resolution"):
        check_deploy(DeployConfig(input_resolution=160), device_precisions=("fp32",), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_only_quantises_matmuls(tmp_path: Path, bits: int) -> None:
    src = matmul_model(tmp_path / "m.onnx")
    deploy = DeployConfig(precision=f"int{bits}-weight", weight_only_block_size=32)
    assert [t.name for t in deploy_transforms(deploy)] == ["weight-only"] and not deploy.quantized
    WeightOnlyQuantizeTransform().apply(src, tmp_path / "q.onnx", deploy, task=None)  # type: ignore[arg-type]
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops
    assert (tmp_path / "q.onnx").stat().st_size < src.stat().st_size
    ref, out = run(src, X), run(tmp_path / "q.onnx", X)
    assert np.abs(out - ref).max() < (0.1 if bits == 4 else 0.02) * np.abs(ref).max()


def test_quantize_op_types_and_keep_first_last(tmp_path: Path) -> None:
    src = matmul_model(tmp_path / "m.onnx")
    model = onnx.load(str(src))
    assert nodes_kept_fp32(model, "first_last") == ["mm1", "mm2"]
    assert nodes_kept_fp32(model, "none") == [] and nodes_kept_fp32(model, "depthwise") == []

    class Feeds(Task):
        name, version = "feeds", "1"

        def train(self, *a: object, **k: object) -> None:  # type: ignore[override]
            raise NotImplementedError

        def evaluate(self, *a: object, **k: object) -> dict[str, float]:
            raise NotImplementedError

        def calibration_batches(self, n: int, batch_size: int = 1):
            for i in range(0, n, batch_size):
                yield {"x": X[:1].repeat(min(batch_size, n - i), axis=0)}

        def input_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
            return {"x": (batch_size, 8, 64)}

    deploy = DeployConfig(precision="int8-static", calibration_size=4, keep_fp32="first_last",
                          quantize_op_types="matmul")
    QuantizeTransform().apply(src, tmp_path / "q.onnx", deploy, Feeds())
    nodes = onnx.load(str(tmp_path / "q.onnx")).graph.node
    assert {"mm1", "mm2"} <= {n.name for n in nodes if n.op_type == "MatMul"}  # both kept in fp32


class _MatMulModel(TransformContract):
    """fp16 and weight-only quantisation are for transformer-style MatMuls (ORT's CPU kernels)."""

    @pytest.fixture()
    def contract_model(self, tmp_path: Path) -> Path:
        return matmul_model(tmp_path / "contract.onnx")

    @pytest.fixture()
    def contract_task(self, contract_model: Path, tmp_path: Path) -> Task:
        np.savez(tmp_path / "contract.npz", x=np.random.default_rng(2).standard_normal((8, 8, 64)).astype(np.float32))
        return OnnxModelTask(model=contract_model, data=tmp_path / "contract.npz")


class TestFp16Contract(_MatMulModel):
    @pytest.fixture()
    def transform(self) -> Transform:
        return Fp16Transform()

    @pytest.fixture()
    def contract_deploy(self) -> DeployConfig:
        return DeployConfig(precision="fp16")


class TestWeightOnlyContract(_MatMulModel):
    @pytest.fixture()
    def transform(self) -> Transform:
        return WeightOnlyQuantizeTransform()

    @pytest.fixture()
    def contract_deploy(self) -> DeployConfig:
        return DeployConfig(precision="int4-weight")
