"""digits-cnn: data split, real training, ONNX export, evaluation with ONNX Runtime, pruning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edge_search.tasks import create_task
from edge_search.tasks.base import ModelArtifact, Task
from edge_search.tasks.digits_cnn import DigitsCnnTask, channels_for, load_splits
from edge_search.testing.contracts import TaskContract

SHORT = {"epochs": 3}


@pytest.fixture(scope="module")
def task() -> DigitsCnnTask:
    return DigitsCnnTask()


@pytest.fixture(scope="module")
def trained(task: DigitsCnnTask, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    return task.train(SHORT, tmp_path_factory.mktemp("train"), seed=0)


def _weights(path: Path) -> dict[str, np.ndarray]:
    """Conv and Gemm weight initializers of an ONNX model, by op type and position."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    for k, node in enumerate(model.graph.node):
        if node.op_type in ("Conv", "Gemm"):
            out[f"{k}:{node.op_type}"] = inits[node.input[1]]
    return out


def _n_params(path: Path) -> int:
    return sum(int(numpy_helper.to_array(i).size) for i in onnx.load(str(path)).graph.initializer)


def test_registry_creates_task() -> None:
    assert isinstance(create_task("digits-cnn"), DigitsCnnTask)


def test_split_is_fixed_stratified_and_cached() -> None:
    s = load_splits()
    assert load_splits() is s
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (1078, 359, 360)
    assert s.x_train.dtype == np.float32 and s.x_train.shape[1:] == (1, 8, 8)
    assert s.x_train.min() >= 0.0 and s.x_train.max() <= 1.0
    for y in (s.y_train, s.y_val, s.y_test):
        assert set(np.unique(y)) == set(range(10))
    flat = [x.reshape(len(x), -1) for x in (s.x_train, s.x_test)]
    assert len({r.tobytes() for r in flat[0]} & {r.tobytes() for r in flat[1]}) < 5  # near-duplicates only


def test_feeds_and_shapes(task: DigitsCnnTask) -> None:
    assert task.input_shapes(4) == {"input": (4, 1, 8, 8)}
    batches = list(task.calibration_batches(10, batch_size=4))
    assert [b["input"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), load_splits().x_train[:10])


def test_unknown_knob_is_rejected(task: DigitsCnnTask, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown train knob"):
        task.train({"momentum": 0.9}, tmp_path, seed=0)


def test_channels_for_depth_and_width() -> None:
    assert channels_for(1.0, 2) == [16, 32]
    assert channels_for(0.5, 4) == [8, 16, 16, 32]
    with pytest.raises(ValueError, match="depth"):
        channels_for(1.0, 5)


def test_train_exports_onnx_with_folded_bn_and_dynamic_batch(task: DigitsCnnTask,
                                                            trained: ModelArtifact) -> None:
    assert trained.checkpoint_path is not None and trained.checkpoint_path.exists()
    assert 0.8 <= trained.metrics["val_accuracy"] <= 1.0
    model = onnx.load(str(trained.onnx_path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    sess = ort.InferenceSession(str(trained.onnx_path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": load_splits().x_test[:5]})[0].shape == (5, 10)


def test_evaluate_uses_onnx_on_test_split(task: DigitsCnnTask, trained: ModelArtifact) -> None:
    acc1 = task.evaluate(trained.onnx_path, batch_size=1)["accuracy"]
    acc64 = task.evaluate(trained.onnx_path, batch_size=64)["accuracy"]
    assert acc1 == pytest.approx(acc64)
    assert acc1 >= 0.9


def test_evaluate_fixed_batch_model_pads_last_chunk(task: DigitsCnnTask, trained: ModelArtifact,
                                                    tmp_path: Path) -> None:
    model = onnx.load(str(trained.onnx_path))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 7  # 360 = 51*7 + 3: last chunk is padded
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    assert task.evaluate(fixed)["accuracy"] == pytest.approx(task.evaluate(trained.onnx_path)["accuracy"])


def test_default_params_reach_acceptance_bar(task: DigitsCnnTask, tmp_path: Path) -> None:
    art = task.train({}, tmp_path, seed=0)
    assert task.evaluate(art.onnx_path)["accuracy"] >= 0.97


def test_training_is_deterministic(task: DigitsCnnTask, trained: ModelArtifact, tmp_path: Path) -> None:
    again = task.train(SHORT, tmp_path / "a", seed=0)
    assert again.onnx_path.read_bytes() == trained.onnx_path.read_bytes()
    assert again.metrics == trained.metrics
    other = task.train(SHORT, tmp_path / "b", seed=1)
    assert other.onnx_path.read_bytes() != trained.onnx_path.read_bytes()


@pytest.mark.parametrize(("width", "depth"), [(0.5, 1), (0.5, 3), (0.25, 4)])
def test_architectures_export_and_run(task: DigitsCnnTask, tmp_path: Path, width: float, depth: int) -> None:
    art = task.train({"epochs": 1, "width": width, "depth": depth}, tmp_path, seed=0)
    convs = [w for k, w in _weights(art.onnx_path).items() if k.endswith("Conv")]
    assert [w.shape[0] for w in convs] == channels_for(width, depth)
    assert 0.0 <= task.evaluate(art.onnx_path, batch_size=32)["accuracy"] <= 1.0


def test_channel_prune_really_shrinks_the_network(task: DigitsCnnTask, trained: ModelArtifact,
                                                  tmp_path: Path) -> None:
    pruned = task.prune(trained, sparsity=0.0, channel_prune=0.5, finetune_epochs=2, params=SHORT,
                        workdir=tmp_path, seed=0)
    before, after = _weights(trained.onnx_path), _weights(pruned.onnx_path)
    conv_before = [w.shape for k, w in before.items() if k.endswith("Conv")]
    conv_after = [w.shape for k, w in after.items() if k.endswith("Conv")]
    assert conv_before == [(16, 1, 3, 3), (32, 16, 3, 3)]
    assert conv_after == [(8, 1, 3, 3), (16, 8, 3, 3)]
    gemm_after = next(w for k, w in after.items() if k.endswith("Gemm"))
    assert gemm_after.shape == (10, 16 * 4 * 4)
    assert _n_params(pruned.onnx_path) < 0.5 * _n_params(trained.onnx_path)
    assert pruned.onnx_path.stat().st_size < trained.onnx_path.stat().st_size
    meta = json.loads({p.key: p.value for p in onnx.load(str(pruned.onnx_path)).metadata_props}
                      ["edge_search.prune"])
    assert meta["channels"] == [8, 16] and meta["channel_prune"] == 0.5
    assert task.evaluate(pruned.onnx_path)["accuracy"] >= 0.85


def test_shrink_copies_weights_of_kept_channels(trained: ModelArtifact) -> None:
    """Dropping channels that output zero leaves the logits unchanged: the weight copy is exact."""
    import torch

    from edge_search.tasks.digits_cnn import _load_checkpoint, shrink_channels

    assert trained.checkpoint_path is not None
    model, _ = _load_checkpoint(trained.checkpoint_path)
    with torch.no_grad():
        for conv, bn in zip(model.convs(), model.bns(), strict=True):
            # Silence the weakest half: zero filter, zero BN shift -> ReLU output is exactly 0.
            dead = torch.argsort(conv.weight.abs().sum((1, 2, 3)))[: conv.out_channels // 2]
            conv.weight[dead] = 0
            bn.bias[dead] = 0
            bn.running_mean[dead] = 0  # type: ignore[index]
        small = shrink_channels(model, 0.5)
        x = torch.from_numpy(load_splits().x_test[:50].copy())
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert small.channels == [8, 16]


def test_sparsity_zeroes_at_least_the_requested_share(task: DigitsCnnTask, trained: ModelArtifact,
                                                      tmp_path: Path) -> None:
    pruned = task.prune(trained, sparsity=0.6, channel_prune=0.25, finetune_epochs=2, params=SHORT,
                        workdir=tmp_path, seed=0)
    weights = _weights(pruned.onnx_path)
    assert [w.shape[0] for k, w in weights.items() if k.endswith("Conv")] == [12, 24]
    for name, w in weights.items():
        assert (w == 0).mean() >= 0.6, name  # masks held through fine-tuning and BN folding
    assert task.evaluate(pruned.onnx_path)["accuracy"] >= 0.8
    assert pruned.metrics["val_accuracy"] > 0


def test_prune_is_deterministic(task: DigitsCnnTask, trained: ModelArtifact, tmp_path: Path) -> None:
    kw = {"sparsity": 0.3, "channel_prune": 0.25, "finetune_epochs": 1, "params": SHORT, "seed": 3}
    a = task.prune(trained, workdir=tmp_path / "a", **kw)  # type: ignore[arg-type]
    b = task.prune(trained, workdir=tmp_path / "b", **kw)  # type: ignore[arg-type]
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()


class TestDigitsCnnContract(TaskContract):
    @pytest.fixture()
    def task(self) -> Task:
        return DigitsCnnTask()

    @pytest.fixture()
    def train_params(self) -> dict[str, Any]:
        return {"epochs": 1, "width": 0.5, "depth": 1}
