"""`edge-search export` and `promote`: bundles that reproduce the trial, and the model registry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from edge_search.bundle.runtime import Runtime, SwitchingRuntime, load_bundle, open_runtime
from edge_search.cli import main
from edge_search.devices.capabilities import PROVIDERS
from edge_search.pareto import pareto_points
from edge_search.tasks.digits_cnn import load_splits
from edge_search.tracking import absolute_sqlite
from tests.shipping_study import STUDY, enter, shipping_study

pytestmark = pytest.mark.slow


@pytest.fixture()
def study_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(shipping_study(tmp_path_factory), monkeypatch)


def _study() -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage="sqlite:///edge-search.db")


def test_export_pareto_then_runtime_reproduces_every_accuracy_exactly(study_dir: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "front"
    assert main(["export", "--study", STUDY, "--pareto", "-o", str(out)]) == 0
    study = _study()
    front = pareto_points(study)
    listed = json.loads((out / "front.json").read_text())["configurations"]
    assert sorted(c["trial"] for c in listed) == [p.trial for p in front]
    assert (out / "runtime.py").is_file()
    splits = load_splits()
    for entry in listed:
        bundle = load_bundle(out / entry["dir"])
        trial = study.trials[bundle.trial]
        logits = Runtime(bundle).predict(splits.x_test)
        accuracy = float((logits.argmax(axis=1) == splits.y_test).mean())
        assert accuracy == trial.user_attrs["metrics"]["accuracy"] == bundle.accuracy  # exactly
    runtime = open_runtime(out, target_ms=1.0)
    assert isinstance(runtime, SwitchingRuntime) and len(runtime.bundles) == len(front)
    runtime.run(runtime.current.example_feeds())


def test_bundle_records_session_options_latency_and_provenance(study_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    study = _study()
    number = pareto_points(study)[0].trial
    trial = study.trials[number]
    out = tmp_path / "one"
    assert main(["export", "--study", STUDY, "--trial", str(number), "-o", str(out)]) == 0
    assert f"python {out / 'runtime.py'} {out}" in capsys.readouterr().out
    m = json.loads((out / "bundle.json").read_text())
    params = trial.user_attrs["config_params"]
    so = m["session_options"]
    assert so["intra_op_threads"] == params["deploy.intra_op_threads"]
    assert so["graph_optimization"] == params["deploy.graph_optimization"]
    assert so["execution_mode"] == params["deploy.execution_mode"] and "allow_spinning" in so
    assert so["providers"] == list(PROVIDERS[params["deploy.execution_provider"]])  # the provider travels
    assert m["inputs"] == [{"name": "input", "type": "tensor(float)", "dims": ["batch", "1", "8", "8"],
                            "shape": [1, 1, 8, 8]}]
    lat, searched = m["latency"], trial.user_attrs["metrics"]["latency_ms"]
    if lat["figure"] == "confirmed":  # the run confirmed its front: the bundle carries both figures
        point = next(p for p in pareto_points(study) if p.trial == number)
        assert lat["median_ms"] == point.values["latency_ms"] and lat["search_median_ms"] == searched
    else:
        assert lat["median_ms"] == searched
    assert m["latency"]["source"] == "measured" and m["latency"]["device"] == "host"
    assert m["accuracy"] == trial.user_attrs["metrics"]["accuracy"]
    prov = m["provenance"]
    assert prov["space_hash"] == study.user_attrs["space_hash"] and prov["task"] == "digits-cnn"
    assert prov["task_version"] and {"onnxruntime", "onnx", "numpy", "edge-search"} <= set(prov["packages"])
    assert m["model"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    stats = json.loads((out / "latency_stats.json").read_text())
    assert len(stats["samples_ms"]) == trial.user_attrs["latency"]["samples"]  # the raw samples travel too


@pytest.mark.parametrize(("args", "message"), [
    (["--trial", "999"], "has no trial 999"),
    (["--trial", "0", "--study", "missing"], "no study named 'missing'"),
])
def test_export_errors_are_one_line_exit_2(study_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], args: list[str],
                                           message: str) -> None:
    capsys.readouterr()  # drop what building the shared study printed
    assert main(["export", "--study", STUDY, *args, "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_promote_registers_a_version_with_alias_and_tags(study_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    study = _study()
    first, *rest = [p.trial for p in pareto_points(study)]
    assert main(["promote", "--study", STUDY, "--trial", str(first), "--name", "digits-ship",
                 "--budget", "latency_ms <= 5"]) == 0
    assert "models:/digits-ship@champion" in capsys.readouterr().out
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    v = client.get_model_version_by_alias("digits-ship", "champion")
    assert v.tags["device"] == "host" and v.tags["budget"] == "latency_ms <= 5"
    assert v.tags["trial"] == str(first) and v.run_id == study.trials[first].user_attrs["mlflow_run_id"]
    assert v.run_id is not None
    files = {a.path for a in client.list_artifacts(v.run_id, "bundle")}
    assert {"bundle/model.onnx", "bundle/bundle.json", "bundle/runtime.py"} <= files
    second = rest[0] if rest else first  # promoting again moves the alias to the new version
    assert main(["promote", "--study", STUDY, "--trial", str(second), "--name", "digits-ship"]) == 0
    v2 = client.get_model_version_by_alias("digits-ship", "champion")
    assert int(v2.version) == int(v.version) + 1
    assert v2.tags["budget"] == "accuracy >= 0.5"  # default: the study's constraints
