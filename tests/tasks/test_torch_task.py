"""The `torch` task: a user's `module:function` builds the model; edge-search exports and scores it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from edge_search.cli import main
from edge_search.config import DeployConfig
from edge_search.errors import InputError
from edge_search.tasks import create_task
from edge_search.tasks.base import Task
from edge_search.tasks.torch_task import EVAL_DATA
from edge_search.testing.contracts import TaskContract
from tests.conftest import FAST_MEASURE

pytest.importorskip("torch")

BUILDER = '''\
import numpy as np
import torch
from torch import nn

TRAIN_KNOBS = {"width": 4, "side": 10}


def build(params):
    w, side = int(params["width"]), int(params["side"])
    model = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(w, 5))
    x = np.random.default_rng(0).standard_normal((12, 3, side, side)).astype(np.float32)
    return model, {"image": x, "labels": np.arange(12) % 5}


def not_a_module(params):
    return "model", {"image": np.zeros((2, 3, 4, 4), np.float32)}


def one_thing(params):
    return nn.Linear(2, 2)


def no_data(params):
    return nn.Linear(2, 2), {"labels": np.zeros(2)}


VALUE = 3
'''


@pytest.fixture()
def builder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user module `tiny_builder` importable from the working directory (like the CLI sees it)."""
    (tmp_path / "tiny_builder.py").write_text(textwrap.dedent(BUILDER))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiny_builder"


def test_train_exports_model_and_data_then_scores_like_onnx(builder: str, tmp_path: Path) -> None:
    task = create_task("torch", {"builder": f"{builder}:build", "dynamic_spatial": True})
    assert dict(task.train_knobs) == {"width": 4, "side": 10} and task.version.startswith("1-")
    art = task.train({"width": 6}, tmp_path / "m", seed=0)
    assert art.onnx_path.exists() and (art.onnx_path.parent / EVAL_DATA).exists()
    bound = task.bind_trial(art, {"width": 6}, DeployConfig(batch_size=3))
    m = bound.evaluate(art.onnx_path, 3)
    assert m["fidelity_top1"] == 1.0 and {"top1", "top5"} <= set(m)
    assert bound.input_shapes(3) == {"image": (3, 3, 10, 10)}
    small = task.bind_trial(art, {}, DeployConfig(input_resolution=8))
    assert small.input_shapes(1) == {"image": (1, 3, 8, 8)}
    assert small.evaluate(art.onnx_path)["fidelity_top1"] == 1


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_pkg.mod:build", "cannot import 'no_such_pkg.mod'"),
    ("tiny_builder:missing", "module 'tiny_builder' has no 'missing'"),
    ("tiny_builder:VALUE", "is a int, not a function"),
    ("tiny_builder build", "option 'builder': String should match pattern"),
])
def test_builder_that_cannot_be_found(builder: str, spec: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        create_task("torch", {"builder": spec})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("fn", "message"), [
    ("not_a_module", "returned a str as the model"),
    ("one_thing", "returned Linear, expected (torch.nn.Module"),
    ("no_data", "returned no input arrays"),
])
def test_builder_returning_the_wrong_type(builder: str, tmp_path: Path, fn: str, message: str) -> None:
    task = create_task("torch", {"builder": f"{builder}:{fn}", "train_knobs": {}})
    with pytest.raises(InputError) as err:
        task.train({}, tmp_path / "m", seed=0)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_study_with_a_torch_builder(builder: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "t.yaml").write_text(f"""\
schema_version: 1
name: torch-byom
task: {{name: torch, options: {{builder: "{builder}:build"}}}}
train:
  width: {{choices: [2, 4]}}
deploy:
  precision: {{choices: [fp32, int8-dynamic]}}
objectives: [fidelity_top1, latency_ms]
""")
    assert main(["run", "--space", "t.yaml", "--trials", "2", "--sampler", "random", *FAST_MEASURE]) == 0
    study = optuna.load_study(study_name="torch-byom-host", storage="sqlite:///edge-search.db")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    capsys.readouterr()
    (workdir / "bad.yaml").write_text((workdir / "t.yaml").read_text().replace(":build", ":one_thing"))
    assert main(["run", "--space", "bad.yaml", "--trials", "1", "--study", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "returned Linear" in err[-1] and len([ln for ln in err if "error" in ln]) == 1
    assert np.isfinite(study.get_trials(states=(TrialState.COMPLETE,))[0].values[1])


class TestTorchTaskContract(TaskContract):
    @pytest.fixture()
    def task(self, builder: str) -> Task:
        return create_task("torch", {"builder": f"{builder}:build"})
