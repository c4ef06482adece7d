"""MagnitudePruneTransform: unstructured pruning of ONNX weight initializers (bring-your-own ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_search.config import DeployConfig
from edge_search.tasks.base import ModelArtifact
from edge_search.tasks.digits_cnn import DigitsCnnTask
from edge_search.testing.contracts import TransformContract
from edge_search.transforms import MagnitudePruneTransform, QuantizeTransform
from edge_search.transforms.base import Transform
from edge_search.transforms.prune import METADATA_KEY, magnitude_prune_array, weight_initializers


@pytest.fixture(scope="module")
def task() -> DigitsCnnTask:
    return DigitsCnnTask()


@pytest.fixture(scope="module")
def fp32(task: DigitsCnnTask, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    return task.train({"epochs": 3}, tmp_path_factory.mktemp("fp32"), seed=0)


def _inits(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_prune_array_zeroes_exactly_the_smallest() -> None:
    w = np.array([[0.1, -3.0, 0.2], [-0.05, 2.0, 1.0]], dtype=np.float32)
    out = magnitude_prune_array(w, 0.5)
    np.testing.assert_array_equal(out, [[0, -3.0, 0], [0, 2.0, 1.0]])
    assert w[0, 0] == pytest.approx(0.1)  # input untouched
    ties = magnitude_prune_array(np.ones(10, dtype=np.float32), 0.35)
    assert int((ties == 0).sum()) == 4  # ceil(3.5): never less than asked, even with ties


def test_applies_on_sparsity_only() -> None:
    t = MagnitudePruneTransform()
    assert not t.applies(DeployConfig())
    assert t.applies(DeployConfig(sparsity=0.3))


def test_prunes_conv_and_gemm_weights_not_biases(task: DigitsCnnTask, fp32: ModelArtifact,
                                                 tmp_path: Path) -> None:
    src_bytes = fp32.onnx_path.read_bytes()
    dst = tmp_path / "pruned.onnx"
    MagnitudePruneTransform().apply(fp32.onnx_path, dst, DeployConfig(sparsity=0.4), task)
    assert fp32.onnx_path.read_bytes() == src_bytes
    model = onnx.load(str(dst))
    targets = weight_initializers(model)
    assert len(targets) == 3  # two convs, one Gemm
    before, after = _inits(fp32.onnx_path), _inits(dst)
    for name, w in after.items():
        if name in targets:
            assert (w == 0).mean() >= 0.4, name
        else:
            np.testing.assert_array_equal(w, before[name])  # biases untouched
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert meta["sparsity"] == 0.4 and meta["tensors"] == 3
    assert meta["method"] == "magnitude-unstructured-per-tensor"
    fp32_acc = task.evaluate(fp32.onnx_path)["accuracy"]
    assert task.evaluate(dst)["accuracy"] >= fp32_acc - 0.1


def test_pruned_then_quantised_keeps_metadata_and_runs(task: DigitsCnnTask, fp32: ModelArtifact,
                                                       tmp_path: Path) -> None:
    deploy = DeployConfig(sparsity=0.3, precision="int8-static")
    MagnitudePruneTransform().apply(fp32.onnx_path, tmp_path / "p.onnx", deploy, task)
    QuantizeTransform().apply(tmp_path / "p.onnx", tmp_path / "q.onnx", deploy, task)

    def metadata(path: Path) -> dict[str, str]:
        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}

    # the pruning record survives quantisation unchanged
    assert metadata(tmp_path / "q.onnx")[METADATA_KEY] == metadata(tmp_path / "p.onnx")[METADATA_KEY]
    assert json.loads(metadata(tmp_path / "q.onnx")[METADATA_KEY])["sparsity"] == 0.3
    # and so do the zeros: each pruned weight is stored int8 with at least its pruned share of zeros
    pruned = {k: float((v == 0).mean()) for k, v in _inits(tmp_path / "p.onnx").items() if v.ndim >= 2}
    quantised = _inits(tmp_path / "q.onnx")
    assert pruned and all(v >= 0.3 for v in pruned.values())
    for name, share in pruned.items():
        q = quantised[f"{name}_quantized"]
        assert q.dtype == np.int8 and float((q == 0).mean()) >= share, name
    # it runs and scores like the pruned float model it came from
    pruned_acc = task.evaluate(tmp_path / "p.onnx")["accuracy"]
    assert abs(task.evaluate(tmp_path / "q.onnx")["accuracy"] - pruned_acc) <= 0.05


def test_matmul_weights_are_pruned(task: DigitsCnnTask, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    MagnitudePruneTransform().apply(src, tmp_path / "out.onnx", DeployConfig(sparsity=0.5), task)
    after = _inits(tmp_path / "out.onnx")
    assert int((after["w"] == 0).sum()) == 6
    np.testing.assert_array_equal(after["b"], b)
    sess = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((2, 4), dtype=np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ after["w"] + b, rtol=1e-6)


class TestMagnitudePruneContract(TransformContract):
    @pytest.fixture()
    def transform(self) -> Transform:
        return MagnitudePruneTransform()

    @pytest.fixture()
    def contract_deploy(self) -> DeployConfig:
        return DeployConfig(sparsity=0.5)
