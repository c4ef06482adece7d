"""Search space loading and validation: every error names the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from edge_search.devices.capabilities import device_capabilities
from edge_search.devices.profile import get_profile
from edge_search.errors import InputError
from edge_search.space import load_space, resolve_space, suggest_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


BASE = """\
schema_version: 1
name: t
task: digits-cnn
deploy:
  precision: {choices: [fp32, int8-dynamic]}
objectives: [accuracy, latency_ms]
"""


def test_builtin_space_loads_and_hashes_stably() -> None:
    a, b = load_space(None), load_space("digits-cnn")
    assert a.space_hash() == b.space_hash()
    assert a.objective_names == ["accuracy", "latency_ms", "size_mb"]
    assert a.directions == ["maximize", "minimize", "minimize"]
    assert str(a.constraints[0]) == "accuracy >= 0.9"


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "schema_version: 1\nname: [unclosed\n")
    with pytest.raises(InputError, match=r"space\.yaml: not valid YAML \(line \d+\)"):
        load_space(p)


def test_unknown_deploy_knob_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, BASE.replace("deploy:\n", "deploy:\n  turbo: {choices: [1, 2]}\n"))
    with pytest.raises(InputError, match=r"space\.yaml: deploy: unknown deploy knob 'turbo'"):
        load_space(p)


def test_unknown_objective_and_bad_constraint(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"objectives\.1.*unknown objective 'speed'"):
        load_space(write(tmp_path, BASE.replace("latency_ms]", "speed]")))
    with pytest.raises(InputError, match=r"constraints\.0.*not of the form"):
        load_space(write(tmp_path, BASE + "constraints: ['accuracy is high']\n"))


def test_constraint_that_can_never_hold_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"can never be met: accuracy lies in \[0, 1\]"):
        load_space(write(tmp_path, BASE + "constraints: ['accuracy >= 1.5']\n"))


def test_bad_range_and_wrong_version(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"deploy\.sparsity.*low \(0\.9\) is above high \(0\.1\)"):
        load_space(write(tmp_path, BASE.replace("deploy:\n", "deploy:\n  sparsity: {low: 0.9, high: 0.1}\n")))
    with pytest.raises(InputError, match="schema_version 7 is not supported"):
        load_space(write(tmp_path, BASE.replace("schema_version: 1", "schema_version: 7")))


def test_missing_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="unknown space 'nope'"):
        load_space("nope")


def test_conditional_knobs_and_cores() -> None:
    space = load_space(None)
    trial = optuna.trial.FixedTrial({
        "train.lr": 0.01, "train.weight_decay": 1e-4, "train.epochs": 5, "train.batch_size": 64,
        "train.width": 1.0, "train.depth": 2, "deploy.execution_provider": "cpu", "deploy.precision": "fp32",
        "deploy.sparsity": 0.0,
        "deploy.channel_prune": 0.0, "deploy.finetune_epochs": 0, "deploy.execution_mode": "sequential",
        "deploy.intra_op_threads": 4, "deploy.graph_optimization": "all"})
    cfg = suggest_config(space, trial, cores=4)
    # calibration_method and per_channel only apply to int8; inter_op only to parallel mode
    assert "calibration_method" not in cfg["deploy"]
    assert "inter_op_threads" not in cfg["deploy"]
    assert cfg["deploy"]["intra_op_threads"] == 4


def test_threads_range_follows_device_cores() -> None:
    space, _ = resolve_space(load_space(None), device_capabilities(get_profile("host")))
    study = optuna.create_study(directions=space.directions)
    seen = set()
    for _ in range(30):
        t = study.ask()
        seen.add(suggest_config(space, t, cores=3)["deploy"]["intra_op_threads"])
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    assert seen <= {1, 2, 3} and max(seen) == 3
