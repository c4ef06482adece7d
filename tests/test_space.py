"""Search space loading and validation: every error names the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from edge_search.devices.capabilities import device_capabilities
from edge_search.devices.profile import get_profile
from edge_search.errors import InputError
from edge_search.space import enumerate_space, load_space, resolve_space, sampled_params, suggest_config


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


def test_inter_op_threads_only_use_the_cores_intra_op_threads_leave() -> None:
    """``high: cores`` of inter_op_threads is cores // intra_op_threads: the sampler never proposes an
    oversubscribed pair (4 of 34 digits proposals were), and the grid has none."""
    space, _ = resolve_space(load_space(None), device_capabilities(get_profile("host")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=space.directions, sampler=optuna.samplers.TPESampler(seed=0))
    pairs = set()
    for i in range(80):
        t = study.ask()
        d = suggest_config(space, t, cores=4)["deploy"]
        if d.get("execution_mode") == "parallel":
            assert d["intra_op_threads"] * d["inter_op_threads"] <= 4, d
            pairs.add((d["intra_op_threads"], d["inter_op_threads"]))
        study.tell(t, [0.9 + 0.001 * (i % 7), 1.0 + i % 5, 1.0])
    assert (1, 4) in pairs and (2, 2) in pairs  # the whole feasible range is still offered
    grid = enumerate_space(space.model_copy(update={"train": {}}), 4, limit=200_000)
    assert grid is not None
    par = {(c["deploy"]["intra_op_threads"], c["deploy"]["inter_op_threads"]) for c in grid
           if c["deploy"].get("execution_mode") == "parallel"}
    assert par == {(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)}
    # the params of a configuration are the names the sampler uses, so enqueueing proposes it again
    config = next(c for c in grid if c["deploy"].get("inter_op_threads") == 2 and c["deploy"]["intra_op_threads"] == 2)
    params = sampled_params(space, config, 4)
    assert params["deploy.inter_op_threads@2"] == 2
    study.enqueue_trial(params)
    assert suggest_config(space, study.ask(), cores=4)["deploy"] == config["deploy"]


def test_threads_range_follows_device_cores() -> None:
    space, _ = resolve_space(load_space(None), device_capabilities(get_profile("host")))
    study = optuna.create_study(directions=space.directions)
    seen = set()
    for _ in range(30):
        t = study.ask()
        seen.add(suggest_config(space, t, cores=3)["deploy"]["intra_op_threads"])
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    assert seen <= {1, 2, 3} and max(seen) == 3


# -- item 4 of issue 14: every knob value is checked against the knob's type when the space loads --


def _space_with(deploy: str, train: str = "") -> str:
    return ("schema_version: 1\nname: t\ntask: digits-cnn\n" + (f"train:\n{train}" if train else "")
            + f"deploy:\n{deploy}objectives: [accuracy, latency_ms]\n")


@pytest.mark.parametrize(("deploy", "message"), [
    # a choices entry: the typo
    ("  precision: {choices: [fp32, int9-dynamic]}\n",
     "deploy.precision: 'int9-dynamic' is not allowed (allowed: fp32, fp16, int8-dynamic, int8-static, "
     "int8-weight, int4-weight)"),
    # a fixed value, bare and as {value: ...}
    ("  precision: int9-dynamic\n", "deploy.precision: 'int9-dynamic' is not allowed"),
    ("  calibration_method: {value: percentil}\n",
     "deploy.calibration_method: 'percentil' is not allowed (allowed: minmax, entropy, percentile)"),
    # range bounds outside the knob's own bounds
    ("  sparsity: {low: 0.0, high: 1.5}\n", "deploy.sparsity: 1.5 is not allowed (allowed: a number >= 0 and < 1)"),
    ("  intra_op_threads: {low: 0, high: 4}\n", "deploy.intra_op_threads: 0 is not allowed (allowed: an integer >= 1)"),
    # the wrong type: a string for a flag, 1 for true, a float range for an integer knob
    ("  per_channel: {choices: [yes, 'no']}\n", "deploy.per_channel: 'no' is not allowed (allowed: true, false)"),
    ("  per_channel: 1\n", "deploy.per_channel: 1 is not allowed (allowed: true, false)"),
    ("  intra_op_threads: {low: 1.0, high: 2.5}\n",
     "deploy.intra_op_threads: a float range (1.0..2.5) for an integer knob"),
    ("  weight_only_block_size: {low: 16, high: 128}\n",
     "deploy.weight_only_block_size: an int range (16..128) for a knob that takes one of a set of values"),
    ("  input_resolution: {choices: [4, 224]}\n",
     "deploy.input_resolution: 4 is not allowed (allowed: an integer >= 8, or null)"),
    # a `when` condition naming a value the other knob cannot take
    ("  precision: {choices: [fp32, int8-static]}\n"
     "  per_channel: {choices: [false, true], when: {precision: int8-statik}}\n",
     "deploy.per_channel: when.precision: 'int8-statik' is not allowed"),
])
def test_every_deploy_value_is_checked_at_load(tmp_path: Path, deploy: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        load_space(write(tmp_path, _space_with(deploy)))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'space.yaml'}: "), text
    assert message in text
    assert "\n" not in text


def test_valid_values_of_every_kind_load(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, _space_with(
        "  precision: {choices: [fp32, int8-static]}\n  sparsity: {low: 0, high: 0.5}\n"
        "  intra_op_threads: {low: 1, high: cores}\n  per_channel: {choices: [false, true]}\n"
        "  input_resolution: {choices: [128, 160]}\n  weight_only_block_size: 64\n")))
    assert set(space.deploy) == {"precision", "sparsity", "intra_op_threads", "per_channel", "input_resolution",
                                 "weight_only_block_size"}


def test_run_rejects_a_bad_value_with_exit_2_before_any_trial(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from edge_search.cli import main

    space = write(tmp_path, _space_with("  precision: {choices: [fp32, int9-dynamic]}\n"))
    code = main(["run", "--space", str(space), "--trials", "1", "--storage", f"sqlite:///{tmp_path}/s.db",
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "deploy.precision: 'int9-dynamic' is not allowed (allowed: fp32," in err[0]
    assert not (tmp_path / "s.db").exists()  # nothing was created, no trial was asked


@pytest.mark.parametrize(("train", "message"), [
    ("  epochs: {choices: [4, ten]}\n",
     "train.epochs: 'ten' is not allowed (allowed: an integer, like the default 10)"),
    ("  epochs: {low: 2.0, high: 8.5}\n", "train.epochs: a float range (2.0..8.5) for an integer knob"),
    ("  lr: fast\n", "train.lr: 'fast' is not allowed (allowed: a number, like the default 0.01)"),
    ("  dropout: 0.1\n", "train.dropout: unknown train knob for task 'digits-cnn'"),
])
def test_train_values_are_checked_against_the_task(tmp_path: Path, train: str, message: str) -> None:
    from edge_search.space import check_train_values
    from edge_search.tasks import create_task

    space = load_space(write(tmp_path, _space_with("  precision: fp32\n", train)))
    task = create_task("digits-cnn", {})
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_train_values(space, task.train_knobs, task.name, "space.yaml")
