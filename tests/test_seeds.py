"""Issue 14 item 3: a new study starts with the configurations a user would try first, derived from
the space (only values it allows), before the sampler's own proposals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_search.records import StudyRecord, TrialRecord
from edge_search.seeds import first_configurations
from edge_search.space import SearchSpace, parse_space, suggest_config


def _space(deploy: str, train: str = "") -> SearchSpace:
    text = ("schema_version: 1\nname: s\ntask: digits-cnn\n" + (f"train:\n{train}" if train else "")
            + f"deploy:\n{deploy}objectives: [accuracy, latency_ms]\n")
    return parse_space(yaml.safe_load(text), "s.yaml")


def _deploy(seed: Any) -> dict[str, Any]:
    return dict(seed.config["deploy"])


def test_the_issues_baselines_in_order() -> None:
    space = _space("  precision: {choices: [fp32, int8-dynamic, int8-static]}\n"
                   "  per_channel: {choices: [false, true], when: {precision: [int8-static, int8-dynamic]}}\n"
                   "  quant_format: {choices: [qdq, qoperator], when: {precision: int8-static}}\n"
                   "  calibration_method: {choices: [minmax, percentile], when: {precision: int8-static}}\n"
                   "  intra_op_threads: {low: 1, high: cores}\n"
                   "  graph_optimization: {choices: [basic, extended, all]}\n")
    seeds = first_configurations(space, 4)
    got = [(s.reason.split(" (")[0], _deploy(s)) for s in seeds]
    common = {"graph_optimization": "all"}
    assert got == [
        ("ONNX Runtime's default session", {"precision": "fp32", "intra_op_threads": 4, **common}),
        ("int8-static per-channel qdq at 4 thread(s)",
         {"precision": "int8-static", "per_channel": True, "quant_format": "qdq", "calibration_method": "minmax",
          "intra_op_threads": 4, **common}),
        ("int8-static per-channel qoperator at 4 thread(s)",
         {"precision": "int8-static", "per_channel": True, "quant_format": "qoperator",
          "calibration_method": "minmax", "intra_op_threads": 4, **common}),
        ("int8-dynamic per-channel at 4 thread(s)",
         {"precision": "int8-dynamic", "per_channel": True, "intra_op_threads": 4, **common}),
        ("fp32 at 3 thread(s)", {"precision": "fp32", "intra_op_threads": 3, **common}),
        ("fp32 at 2 thread(s)", {"precision": "fp32", "intra_op_threads": 2, **common}),
        ("fp32 at 1 thread(s)", {"precision": "fp32", "intra_op_threads": 1, **common}),
    ]
    # the params propose exactly these configurations through the space's own suggestions
    import optuna

    study = optuna.create_study(directions=["maximize", "minimize"])
    for s in seeds:
        study.enqueue_trial(s.params)
    for s in seeds:
        assert suggest_config(space, study.ask(), 4)["deploy"] == s.config["deploy"]


def test_only_values_the_space_allows() -> None:
    space = _space("  precision: {choices: [fp32, int8-static]}\n  per_channel: false\n"
                   "  intra_op_threads: {choices: [1, 2]}\n  graph_optimization: {choices: [basic, extended]}\n",
                   train="  epochs: {choices: [4, 12]}\n  width: {low: 0.25, high: 0.75}\n")
    seeds = first_configurations(space, 8)
    for s in seeds:
        d = s.config["deploy"]
        assert d["per_channel"] is False  # per-channel wanted, but the space fixes it off
        assert d["graph_optimization"] == "basic"  # 'all' not allowed: the first allowed value
        assert d["intra_op_threads"] in (1, 2)
        # train knobs are the sampler's: seeds fix only the deploy knobs a user would hand-tune
        assert s.config["train"] == {} and not any(k.startswith("train.") for k in s.params)
    assert [s.config["deploy"]["precision"] for s in seeds] == ["fp32", "int8-static", "fp32"]


def test_no_int8_without_int8_and_limits_and_dedup() -> None:
    space = _space("  precision: fp32\n  intra_op_threads: {low: 1, high: 8}\n")
    assert [s.config["deploy"]["intra_op_threads"] for s in first_configurations(space, 8)] == list(
        range(8, 0, -1))
    assert len(first_configurations(space, 8, limit=3)) == 3
    # one configuration however the wishes differ: a fixed space gives one seed
    fixed = _space("  precision: fp32\n  intra_op_threads: 1\n")
    assert len(first_configurations(fixed, 8)) == 1
    # what the pipeline cannot deploy is dropped (the key says None)
    space2 = _space("  precision: {choices: [fp32, fp16]}\n")
    seeds = first_configurations(space2, 2, key=lambda c: None if c["deploy"]["precision"] == "fp16" else "k")
    assert [s.config["deploy"]["precision"] for s in seeds] == ["fp32"]


def test_a_new_study_is_seeded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_search.run import _seed
    from tests.drivers.test_ledger import QUANT_SPACE, Harness

    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path, QUANT_SPACE + "  quant_format: {choices: [qdq, qoperator], when: {precision: int8-static}}\n")
    _seed(h.session, h.pipeline, 40)
    waiting = [t for t in h.session.study.get_trials() if t.state.name == "WAITING"]
    reasons = [t.user_attrs[TrialRecord.SEED_REASON] for t in waiting]
    assert reasons[0].startswith("ONNX Runtime's default session") and len(reasons) == 4
    assert h.session.study.user_attrs[StudyRecord.SEEDED] == reasons
    _seed(h.session, h.pipeline, 40)  # a second process, or a resumed run: nothing more
    assert len(h.session.study.get_trials()) == 4
    h.run(4)
    first = sorted(h.complete(), key=lambda t: t.number)[:4]
    assert [TrialRecord.of(t).get(TrialRecord.SEED_REASON) for t in first] == reasons
    assert first[0].params["deploy.precision"] == "fp32" and first[0].params["deploy.intra_op_threads"] == 2


def test_a_jetson_space_seeds_its_gpu_providers_at_the_precisions_they_run() -> None:
    """A GPU provider is tried early (fp16 where its path runs it), precisions before thread counts, and
    every seed names the per-provider precision parameter the sampler would use."""
    from edge_search.devices.capabilities import device_capabilities
    from edge_search.devices.profile import load_profiles
    from edge_search.space import load_space, resolve_space

    space, _ = resolve_space(load_space(None), device_capabilities(load_profiles()["jetson-nano"]))
    seeds = first_configurations(space, 4, limit=6)
    got = [(s.config["deploy"]["execution_provider"], s.config["deploy"]["precision"]) for s in seeds]
    assert got == [("cpu", "fp32"), ("cuda", "fp16"), ("tensorrt", "fp16"), ("cpu", "int8-static"),
                   ("cpu", "int8-dynamic"), ("cpu", "fp32")]
    assert seeds[2].params["deploy.precision@tensorrt"] == "fp16"
    assert "deploy.precision" not in seeds[2].params
