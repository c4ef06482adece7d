"""Bundles everywhere: export records the shapes a trial was measured at, for models whose inputs
have symbolic dimensions beyond the batch (a searched `input_resolution`, a transformer's sequence
length), and `measure`, `predict` and `check` take a bundle folder with those shapes (and `check`
takes `--shape` / `shapes:` for a plain ONNX file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import optuna
import pytest
from mlflow.tracking import MlflowClient
from onnx import TensorProto, helper, numpy_helper
from optuna.trial import TrialState

from edge_search.cli import main
from edge_search.tracking import absolute_sqlite
from tests.tasks.test_onnx_task import conv_classifier, images

pytestmark = pytest.mark.slow


def token_classifier(path: Path, *, vocab: int = 16, dim: int = 8, classes: int = 4) -> Path:
    """tokens (N, seq) int64 -> embedding Gather -> mean over the sequence -> Gemm: a model whose
    sequence length is a symbolic dimension, as in every dynamic-sequence transformer export."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((vocab, dim)).astype(np.float32)
    w = rng.standard_normal((classes, dim)).astype(np.float32)
    b = np.zeros(classes, np.float32)
    nodes = [helper.make_node("Gather", ["emb", "tokens"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e", "axes"], ["m"], name="mean", keepdims=0),
             helper.make_node("Gemm", ["m", "w", "b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["n", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


CASES = {
    # an image model exported with dynamic height and width, searched over input_resolution
    "resolution": ("x", lambda d: conv_classifier(d / "m.onnx"),
                   lambda d: np.savez(d / "d.npz", x=images(16), labels=np.arange(16) % 6),
                   "input_resolution: {choices: [8, 12]}\n  batch_size: {choices: [1, 2]}"),
    # a sequence model: the sequence length (7) comes from the data
    "sequence": ("tokens", lambda d: token_classifier(d / "m.onnx"),
                 lambda d: np.savez(d / "d.npz", tokens=np.random.default_rng(1).integers(0, 16, (16, 7)),
                                    labels=np.arange(16) % 4),
                 "batch_size: {choices: [1, 3]}"),
}


def _expected_shape(case: str, params: dict[str, object]) -> list[int]:
    batch = int(params.get("deploy.batch_size", 1))  # type: ignore[call-overload]
    if case == "resolution":
        side = int(params["deploy.input_resolution"])  # type: ignore[call-overload]
        return [batch, 3, side, side]
    return [batch, 7]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_records_measured_shapes_and_every_command_takes_the_bundle(
        workdir: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    name, make_model, make_data, deploy = CASES[case]
    make_model(workdir)
    make_data(workdir)
    (workdir / "s.yaml").write_text(f"""\
schema_version: 1
name: shapes
task: {{name: onnx, options: {{model: m.onnx, data: d.npz, metric: fidelity_top1}}}}
deploy:
  {deploy}
objectives: [fidelity_top1, latency_ms]
""")
    assert main(["run", "--space", "s.yaml", "--trials", "2", "--sampler", "random", "--seed", "1",
                 "--max-measure-time", "0.3", "--precision-target", "0.1"]) == 0
    study = optuna.load_study(study_name="shapes-host", storage="sqlite:///edge-search.db")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        want = _expected_shape(case, trial.user_attrs["config_params"])
        assert trial.user_attrs["input_shapes"] == {name: want}  # what was measured, recorded
        out = workdir / f"bundle-{trial.number}"
        assert main(["export", "--study", "shapes-host", "--trial", str(trial.number), "-o", str(out)]) == 0
        manifest = json.loads((out / "bundle.json").read_text())
        declared = ["n", "3", "h", "w"] if case == "resolution" else ["n", "seq"]
        assert manifest["inputs"][0]["dims"] == declared and manifest["inputs"][0]["shape"] == want
        capsys.readouterr()

        # measure: the bundle's shapes and session knobs, no --shape
        assert main(["measure", str(out), "--json", "--max-time", "0.2", "--precision-target", "0.2"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["extra"]["input_shapes"] == {name: want}
        assert stats["knobs"]["intra_op_threads"] == manifest["session_options"]["intra_op_threads"]
        # predict: the bundle's shapes (graph-only: nothing executed)
        assert main(["predict", str(out), "--device", "raspberry-pi-4", "--graph-only", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["source"] == "emulated"

    # promote registers the same bundle, shapes included
    first = trials[0]
    assert main(["promote", "--study", "shapes-host", "--trial", str(first.number), "--name", "shapes"]) == 0
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    version = client.get_model_version_by_alias("shapes", "champion")
    assert version.run_id is not None
    got = Path(client.download_artifacts(version.run_id, "bundle/bundle.json", str(workdir)))
    assert json.loads(got.read_text())["inputs"][0]["shape"] == _expected_shape(case, first.user_attrs["config_params"])
    capsys.readouterr()  # MLflow's download progress

    # the bare model file has symbolic dimensions: an explicit shape is needed, and the error says how
    model = workdir / f"bundle-{trials[0].number}" / "model.onnx"
    assert main(["measure", str(model)]) == 2
    assert f"give its shape with --shape {name}=" in _one_line_error(capsys)


@pytest.fixture()
def dynamic_model(workdir: Path) -> Path:
    """An image model with symbolic batch, height and width (input `x`)."""
    return conv_classifier(workdir / "m.onnx")


def _check(workdir: Path, body: str, *args: str) -> int:
    (workdir / "budgets.yaml").write_text("schema_version: 1\nmeasurement: {min_rounds: 2, max_rounds: 2}\n" + body)
    return main(["check", "budgets.yaml", "-q", "--json", "r.json", *args])


def test_check_takes_shapes_from_the_file_or_the_command_line(dynamic_model: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    workdir = dynamic_model.parent
    budgets = "models: [{model: m.onnx, budgets: {latency_ms: 1000}}]\n"
    assert _check(workdir, budgets) == 2  # nothing to measure it at: one line saying how to give shapes
    line = _one_line_error(capsys)
    assert "--shape x=N,3,N,N" in line and "shapes:" in line and "'m'" in line
    # --shape on the command line, a model's shapes, the file's shapes: each is measured at its shape
    for body, args, shape in [
        (budgets, ["--shape", "x=1,3,9,9"], [1, 3, 9, 9]),
        ("models: [{model: m.onnx, shapes: {x: [2, 3, 10, 10]}, budgets: {latency_ms: 1000}}]\n", [],
         [2, 3, 10, 10]),
        ("shapes: {x: [1, 3, 11, 11]}\n" + budgets, [], [1, 3, 11, 11]),
        ("shapes: {x: [1, 3, 11, 11]}\n" + budgets, ["--shape", "x=1,3,12,12"], [1, 3, 12, 12]),  # CLI wins
    ]:
        assert _check(workdir, body, "--save-baseline", "b.json", *args) == 0, capsys.readouterr()
        rounds = json.loads((workdir / "b.json").read_text())["models"]["m"]["rounds"]
        assert [r["extra"]["input_shapes"] for r in rounds] == [{"x": shape}] * 2
    capsys.readouterr()
    assert _check(workdir, budgets, "--shape", "y=1,2") == 2
    assert "--shape y: no model of the check has such an input" in _one_line_error(capsys)
    assert _check(workdir, budgets, "--shape", "x=1,4,9,9") == 2  # 3 channels are fixed by the model
    assert "dimension 1 is fixed to 3" in _one_line_error(capsys)


def test_input_spec_of_trials_recorded_before_shapes_were_kept(tmp_path: Path) -> None:
    """Older trials have no `input_shapes` attribute: the measurement's own record of its feeds is
    used, else a symbolic batch axis is the trial's batch size; anything else is a one-line error."""
    from edge_search.bundle.export import _input_spec
    from edge_search.errors import InputError

    old = optuna.trial.create_trial(values=[1.0], user_attrs={})
    image = conv_classifier(tmp_path / "image.onnx")  # x: [n, 3, h, w]
    stats = {"extra": {"input_shapes": {"x": [2, 3, 10, 10]}}}
    assert _input_spec(image, old, stats, 2)[0]["shape"] == [2, 3, 10, 10]
    with pytest.raises(InputError, match=r"input 'x' has symbolic dimensions beyond the batch \(h, w\)"):
        _input_spec(image, old, None, 1)
    rows = tmp_path / "rows.onnx"  # x: [batch, 4]: only the batch axis is open
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "rows",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(rows))
    assert _input_spec(rows, old, None, 8) == [{"name": "x", "type": "tensor(float)", "dims": ["batch", "4"],
                                                 "shape": [8, 4]}]
    recorded = optuna.trial.create_trial(values=[1.0], user_attrs={"input_shapes": {"x": [3, 4]}})
    assert _input_spec(rows, recorded, stats, 8)[0]["shape"] == [3, 4]  # the trial's record wins
