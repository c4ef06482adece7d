"""The float rewrites before int8 are exact (CLE, SmoothQuant), and tensors that cannot be
calibrated (a mask holding -inf, as in a transformer's attention) stay float32 instead of failing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edge_search.config import DeployConfig
from edge_search.transforms import QuantizeTransform
from edge_search.transforms.quantize.equalization import equalize
from edge_search.transforms.quantize.ort import fp32_nodes_of
from edge_search.transforms.quantize.smoothing import smooth

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return nh.from_array(value.astype(np.float32), name)


def conv_relu_conv() -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> Conv(8->8, depthwise) -> Conv(8->4): channels of wildly different scale."""
    w1 = RNG.normal(size=(8, 3, 3, 3)) * np.logspace(-2, 1, 8)[:, None, None, None]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["d", "w3", "b3"], ["y"], name="c3")]
    inits = [_init("w1", w1), _init("b1", RNG.normal(size=8)), _init("w2", RNG.normal(size=(8, 1, 3, 3))),
             _init("b2", RNG.normal(size=8)), _init("w3", RNG.normal(size=(4, 8, 1, 1))),
             _init("b3", RNG.normal(size=4))]
    graph = helper.make_graph(nodes, "cle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cle_is_exact_in_float_and_evens_the_weight_ranges() -> None:
    model = conv_relu_conv()
    x = {"x": RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)}
    before = _run(model, x)
    w1 = nh.to_array(model.graph.initializer[0])
    assert equalize(model) == 2  # c1 -> relu -> dw, dw -> c3
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-4, atol=1e-4)
    ranges = lambda w: np.abs(w).reshape(len(w), -1).max(axis=1)  # noqa: E731
    spread = lambda w: ranges(w).max() / ranges(w).min()  # noqa: E731
    assert spread(nh.to_array(model.graph.initializer[0])) < spread(w1) / 10


def layernorm_matmuls() -> onnx.ModelProto:
    """LayerNorm -> two MatMuls (+ a residual Add that also reads the LayerNorm output)."""
    x_scale = np.ones(16)
    x_scale[3] = 40.0  # an outlier channel, as transformers have
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "wq"], ["q"], name="mq"),
             helper.make_node("MatMul", ["h", "wk"], ["k"], name="mk"),
             helper.make_node("Add", ["q", "k"], ["qk"], name="add"),
             helper.make_node("Add", ["qk", "h"], ["y"], name="residual")]
    inits = [_init("g", x_scale), _init("b", RNG.normal(size=16)), _init("wq", RNG.normal(size=(16, 16))),
             _init("wk", RNG.normal(size=(16, 16)))]
    graph = helper.make_graph(nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_smoothquant_is_exact_in_float_and_shrinks_the_outlier_channel() -> None:
    model = layernorm_matmuls()
    feeds = [{"x": RNG.normal(size=(2, 5, 16)).astype(np.float32)} for _ in range(3)]
    before = _run(model, feeds[0])
    assert smooth(model, feeds, alpha=0.5) == 1  # one input tensor, shared by both MatMuls
    np.testing.assert_allclose(_run(model, feeds[0]), before, rtol=1e-4, atol=1e-3)
    mul = [n for n in model.graph.node if n.op_type == "Mul"]
    assert len(mul) == 1  # the residual also reads h: a Mul, not folded into the LayerNorm
    inv = {i.name: nh.to_array(i) for i in model.graph.initializer}[mul[0].input[1]]
    assert inv[3] < inv[np.arange(16) != 3].min()  # the outlier channel is scaled down most


def masked_model() -> onnx.ModelProto:
    """MatMul -> Add(mask with -inf) -> Softmax -> MatMul: the masked tensor cannot be calibrated."""
    mask = np.zeros((1, 8), np.float32)
    mask[0, 6:] = -np.inf
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"], name="scores"),
             helper.make_node("Add", ["s", "mask"], ["masked"], name="apply_mask"),
             helper.make_node("Softmax", ["masked"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "w2"], ["y"], name="out")]
    inits = [_init("w1", RNG.normal(size=(8, 8))), nh.from_array(mask, "mask"), _init("w2", RNG.normal(size=(8, 4)))]
    graph = helper.make_graph(nodes, "mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


class ArrayTask:
    """A stand-in task over in-memory samples (calibration and evaluation are all the test needs)."""

    name = "arrays"

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def calibration_batches(self, n: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        for lo in range(0, min(n, len(self.x)), batch_size):
            yield {"x": self.x[lo:min(lo + batch_size, n)]}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_tensors_that_cannot_be_calibrated_stay_float(tmp_path: Path, method: str) -> None:
    src, model = tmp_path / "mask.onnx", masked_model()
    onnx.save(model, str(src))
    task: Any = ArrayTask(RNG.normal(size=(40, 8)).astype(np.float32))
    dst = tmp_path / "q.onnx"
    QuantizeTransform().apply(src, dst, DeployConfig(precision="int8-static", calibration_method=method,
                                                     bias_correction=False), task)
    kept = fp32_nodes_of(dst) or []
    # the node writing the masked scores (ORT's pre-processing may fuse MatMul + Add into it) and the
    # Softmax reading them stay float32
    assert "softmax" in kept and any(k.startswith(("apply_mask", "scores")) for k in kept)
    feed = {"x": task.x[:4]}
    ref, out = _run(model, feed), _run(onnx.load(str(dst)), feed)
    assert np.isfinite(out).all()
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


def test_layers_kept_in_float_get_their_uncorrected_biases_back(tmp_path: Path) -> None:
    """Bias correction compensates the rounding of int8 weights; a layer that stays float32 (keep_fp32_top_k,
    the sensitivity analysis' variants) must not carry it, or it adds the opposite error. With every layer
    kept in float32 the quantised model is the float model again."""
    from edge_search.transforms.quantize.static import prepare_static, quantize_prepared

    src = tmp_path / "m.onnx"
    model = conv_relu_conv()
    onnx.save(model, str(src))
    task: Any = ArrayTask(np.abs(RNG.normal(size=(32, 3, 8, 8))).astype(np.float32) + 0.5)  # E[x] > 0
    deploy = DeployConfig(precision="int8-static", bias_correction=True, calibration_size=32)
    prepared = prepare_static(src, tmp_path / "prep", deploy, task)
    assert "bias-correction" in prepared.steps and set(prepared.corrected) == {"c1", "dw", "c3"}
    feed = {"x": task.x[:1]}
    ref = _run(model, feed)
    corrected = _run(onnx.load(str(prepared.path)), feed)
    assert np.abs(corrected - ref).max() > 1e-4  # the correction is there (the test below can fail)

    all_float = tmp_path / "float.onnx"
    quantize_prepared(prepared, all_float, deploy, ["c1", "relu", "dw", "c3"])
    np.testing.assert_allclose(_run(onnx.load(str(all_float)), feed), ref, rtol=1e-5, atol=1e-5)

    one_float = tmp_path / "one.onnx"
    quantize_prepared(prepared, one_float, deploy, ["c3"])
    inits = {i.name: nh.to_array(i) for i in onnx.load(str(one_float)).graph.initializer}
    np.testing.assert_array_equal(inits["b3"], nh.to_array(model.graph.initializer[5]))  # float layer: original
    assert any(name.startswith("b1") and value.dtype == np.int32 for name, value in inits.items())  # int8 layer


def test_a_float_layer_stays_float_when_onnx_runtime_loads_the_model(tmp_path: Path) -> None:
    """ONNX Runtime's `WeightBiasQuantization` (session load, level basic and up) quantises the float weights
    of a Conv that reads a DequantizeLinear per-tensor; a layer edge-search keeps in float32 must survive it."""
    src, dst, opt = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "loaded.onnx"
    model = conv_relu_conv()
    onnx.save(model, str(src))
    task: Any = ArrayTask(np.abs(RNG.normal(size=(32, 3, 8, 8))).astype(np.float32))
    QuantizeTransform().apply(src, dst, DeployConfig(precision="int8-static", keep_fp32="depthwise",
                                                     bias_correction=False, calibration_size=32), task)
    assert fp32_nodes_of(dst) == ["dw"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    loaded = onnx.load(str(opt))
    dw = next(n for n in loaded.graph.node if n.name == "dw")
    assert dw.input[1] in {i.name for i in loaded.graph.initializer}  # float weights, not a DequantizeLinear's
    feed = {"x": task.x[:1]}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    as_saved = ort.InferenceSession(str(dst), plain, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    as_loaded = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(as_loaded, as_saved, rtol=1e-4, atol=1e-4)
