"""The `onnx` task: bring-your-own model and data, real ONNX Runtime, one-line input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from onnx import TensorProto, helper, numpy_helper
from optuna.trial import TrialState

from edge_search.cli import main
from edge_search.config import DeployConfig
from edge_search.errors import InputError, InvalidConfig
from edge_search.records import TrialRecord
from edge_search.tasks import create_task
from edge_search.tasks.base import ModelArtifact, Task
from edge_search.tasks.data import load_data, resize_array
from edge_search.tasks.onnx_model import OnnxModelTask
from edge_search.testing.contracts import TaskContract
from edge_search.transforms import deploy_transforms
from tests.conftest import FAST_MEASURE


def conv_classifier(path: Path, *, classes: int = 6, side: int | str = "h", seed: int = 0) -> Path:
    """x (N,3,H,W) -> Conv3x3 -> Relu -> depthwise Conv3x3 -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.3
    w3 = rng.standard_normal((classes, 8)).astype(np.float32)
    b3 = rng.standard_normal(classes).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    w = "w" if isinstance(side, str) else side
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, side, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"), (b3, "b3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def images(n: int, side: int = 12, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, side, side)).astype(np.float32)


@pytest.fixture()
def model_and_data(tmp_path: Path) -> tuple[Path, Path]:
    model = conv_classifier(tmp_path / "m.onnx")
    x = images(40)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(40) % 6)
    return model, tmp_path / "d.npz"


def _apply(task: OnnxModelTask, deploy: DeployConfig, tmp: Path) -> tuple[Task, Path]:
    bound = task.bind_trial(ModelArtifact(onnx_path=task.model_path), {}, deploy)
    src = task.train({}, tmp / "train", 0).onnx_path
    for i, t in enumerate(deploy_transforms(deploy)):
        dst = tmp / f"step{i}.onnx"
        t.apply(src, dst, deploy, bound)
        src = dst
    return bound, src


def test_labels_give_top1_top5_and_fidelity(model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = model_and_data
    task = create_task("onnx", {"model": str(model), "data": str(data)})
    assert isinstance(task, OnnxModelTask)
    assert task.primary_metric == "top1" and task.can_train is False
    m = task.evaluate(model, batch_size=4)
    assert m["fidelity_top1"] == 1.0 and m["fidelity_cosine"] == pytest.approx(1.0)
    assert m["fidelity_max_abs_err"] < 1e-5 and m["accuracy"] == m["top1"]
    assert 0 <= m["top1"] <= m["top5"] <= 1
    assert task.input_shapes(4) == {"x": (4, 3, 12, 12)}
    # int8 static: calibration comes from the end of the same data; the model changes, fidelity stays high
    deploy = DeployConfig(precision="int8-static", per_channel=True, calibration_size=8,
                          keep_fp32="depthwise")
    bound, q = _apply(task, deploy, tmp_path)
    qm = bound.evaluate(q, 1)
    assert q.read_bytes() != model.read_bytes() and qm["fidelity_cosine"] > 0.95
    assert "dw" in {n.name for n in onnx.load(str(q)).graph.node if n.op_type == "Conv"}  # kept fp32


def test_changed_model_file_changes_the_cache_version(model_and_data: tuple[Path, Path]) -> None:
    model, data = model_and_data
    v1 = OnnxModelTask(model=model, data=data).version
    conv_classifier(model, seed=5)
    assert OnnxModelTask(model=model, data=data).version != v1


def test_input_resolution_resizes_data_and_shapes(tmp_path: Path, model_and_data: tuple[Path, Path]) -> None:
    model, data = model_and_data
    task = OnnxModelTask(model=model, data=data, metric="fidelity_cosine")
    bound, out = _apply(task, DeployConfig(input_resolution=8, batch_size=2), tmp_path)
    assert bound.input_shapes(2) == {"x": (2, 3, 8, 8)} and task.input_shapes(2) == {"x": (2, 3, 12, 12)}
    assert bound.evaluate(out, 2)["fidelity_cosine"] == pytest.approx(1.0)
    fixed = OnnxModelTask(model=conv_classifier(tmp_path / "fixed.onnx", side=12), data=data)
    with pytest.raises(InvalidConfig, match="fixed size"):
        fixed.bind_trial(ModelArtifact(onnx_path=fixed.model_path), {}, DeployConfig(input_resolution=8))


def test_resize_and_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    assert resize_array(x, 2).shape == (1, 1, 2, 2) and resize_array(x, 4) is x
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    from edge_search.tasks.data import Preprocess

    d = load_data(tmp_path / "imgs", image_input="x", preprocess=Preprocess(resolution=12))
    assert d.inputs["x"].shape == (4, 3, 12, 12) and d.labels is not None and list(d.labels) == [0, 0, 1, 1]


def test_fidelity_metric_without_labels(tmp_path: Path) -> None:
    model = conv_classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=images(10))
    task = OnnxModelTask(model=model, data=tmp_path / "d.npz")
    assert task.primary_metric == "fidelity_top1"
    assert "top1" not in task.evaluate(model) and task.evaluate(model)["fidelity_top1"] == 1.0


@pytest.mark.parametrize(("make", "options", "message"), [
    (lambda p: np.savez(p, y=images(4)), {}, "inputs ['y'] do not match the model's inputs ['x']"),
    (lambda p: np.savez(p, x=images(4), labels=np.zeros((4, 2))), {}, "labels have shape [4, 2]"),
    (lambda p: np.savez(p, x=images(4), labels=np.arange(4) + 10), {}, "the model has 6 classes"),
    (lambda p: np.savez(p, x=images(4), labels=np.arange(3)), {}, "expected 4 samples along axis 0"),
    (lambda p: np.savez(p, x=images(4)), {"metric": "top1"}, "top1 needs class-index labels"),
    (lambda p: np.savez(p, x=images(4)), {"calibration_data": "missing.npz"}, "missing.npz: no such data"),
    (lambda p: np.savez(p, x=images(4)), {"model": "nope.onnx"}, "option 'model': nope.onnx: no such file"),
    (lambda p: np.savez(p, x=images(4)), {"turbo": 1}, "option 'turbo': Extra inputs are not permitted"),
    (lambda p: np.savez(p, x=images(4)), {"output": "probs"}, "no output 'probs'"),
])
def test_bad_inputs_are_one_line_input_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: object,
                                              options: dict[str, object], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    conv_classifier(tmp_path / "m.onnx")
    make(tmp_path / "d.npz")  # type: ignore[operator]
    with pytest.raises(InputError) as err:
        create_task("onnx", {"model": "m.onnx", "data": "d.npz", **options})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_study_on_host_and_cli_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conv_classifier(workdir / "m.onnx")
    np.savez(workdir / "d.npz", x=images(24), labels=np.arange(24) % 6)
    (workdir / "s.yaml").write_text("""\
schema_version: 1
name: byom
task: {name: onnx, options: {model: m.onnx, data: d.npz, metric: fidelity_top1, eval_size: 16}}
deploy:
  precision: {choices: [fp32, fp16, int8-static, int8-dynamic]}
  calibration_size: 8
  keep_fp32: {choices: [none, first_last], when: {precision: int8-static}}
  sparsity: {choices: [0.0, 0.5]}
  batch_size: {choices: [1, 2]}
objectives: [fidelity_top1, latency_ms, throughput_per_s]
""")
    assert main(["run", "--space", "s.yaml", "--trials", "3", "--sampler", "random", *FAST_MEASURE]) == 0
    study = optuna.load_study(study_name="byom-host", storage="sqlite:///edge-search.db")
    # a repeated proposal or a failure is a COMPLETE (infeasible) trial too since issue 14: count the evaluated ones
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if TrialRecord.of(t).evaluated]
    assert len(done) == 3 and all({"top1", "fidelity_cosine"} <= set(t.user_attrs["metrics"]) for t in done)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert all("CPU-only" in t.user_attrs["invalid_reason"] for t in pruned
               if "fp16" in t.user_attrs["invalid_reason"])
    capsys.readouterr()
    np.savez(workdir / "d.npz", tokens=np.zeros((4, 3), np.int64))
    assert main(["run", "--space", "s.yaml", "--trials", "1", "--study", "other"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not match the model's inputs" in err[0]


class TestOnnxTaskContract(TaskContract):
    @pytest.fixture()
    def task(self, model_and_data: tuple[Path, Path]) -> Task:
        model, data = model_and_data
        return OnnxModelTask(model=model, data=data)
