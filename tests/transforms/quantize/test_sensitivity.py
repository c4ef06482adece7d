"""Mixed precision by sensitivity: the ranking (calibrated once, cached), the keep_fp32_top_k knob
producing a real ONNX model with the named nodes in float32, and the `sensitivity` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_search.cache import ArtifactCache
from edge_search.cli import main
from edge_search.config import DeployConfig, check_deploy
from edge_search.errors import InputError, InvalidConfig
from edge_search.tasks.onnx_model import OnnxModelTask
from edge_search.transforms import deploy_transforms
from edge_search.transforms.quantize import sensitivity
from edge_search.transforms.quantize.ort import FP32_NODES_KEY, fp32_node_tags, fp32_nodes_of
from edge_search.transforms.quantize.sensitivity import Method, QuantSettings, analyse_sensitivity
from tests.tasks.test_onnx_task import conv_classifier, images

SETTINGS = QuantSettings(calibration_size=16)


@pytest.fixture()
def task(tmp_path: Path) -> OnnxModelTask:
    model = conv_classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=images(40))
    return OnnxModelTask(model=str(model), data=str(tmp_path / "d.npz"), metric="fidelity_top1", eval_size=24)


@pytest.fixture(autouse=True)
def _fresh_memo() -> None:
    sensitivity._MEMO.clear()


def _count_calibrations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from edge_search.transforms.quantize import static

    calls: list[int] = []
    real = static.calibrate  # type: ignore[attr-defined]

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(static, "calibrate", counted)
    return calls


@pytest.mark.parametrize("method", ["quantise", "dequantise"])
def test_ranking_calibrates_once_and_is_cached(task: OnnxModelTask, tmp_path: Path, method: Method,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_calibrations(monkeypatch)
    cache = ArtifactCache(tmp_path / "cache")
    report = analyse_sensitivity(task.model_path, task, SETTINGS, cache=cache, method=method)
    assert sorted(report.ranking) == ["conv1", "dw", "fc"]  # every Conv/Gemm is a candidate
    assert len(calls) == 2  # once, and once after bias correction; all-int8 and the variants reuse it
    assert report.fp32_score == 1.0 and report.metric == "fidelity_top1"
    gains = [(n.gain, n.cosine_gain or 0.0) for n in report.nodes]
    assert gains == sorted(gains, reverse=True)  # most sensitive first
    for n in report.nodes:  # what keeping the candidate in fp32 is worth, by either method
        want = n.score - report.int8_score if method == "dequantise" else report.fp32_score - n.score
        assert n.gain == pytest.approx(want) and n.members[0] == n.name
    assert report.method == method
    assert dict((n.name, n.members) for n in report.nodes)["dw"] == ("dw", "pool", "flat")  # dw feeds the chain
    assert (cache.path("sensitivity", report.cache_key) / "report.json").exists()

    sensitivity._MEMO.clear()  # a new process: read back from the cache, no analysis
    monkeypatch.setattr(sensitivity, "_analyse_into", lambda *a, **k: pytest.fail("recomputed"))
    again = analyse_sensitivity(task.model_path, task, SETTINGS, cache=cache, method=method)
    assert again.ranking == report.ranking and again.int8_score == report.int8_score
    # other quantisation settings are another analysis
    assert sensitivity.sensitivity_key(task.model_path, task, SETTINGS, "fidelity_top1") != \
        sensitivity.sensitivity_key(task.model_path, task, QuantSettings(calibration_size=16, per_channel=False),
                                    "fidelity_top1")
    assert report.top(2) == report.ranking[:2] and report.top_fraction(0.34) == report.ranking[:1]


def test_keep_top_k_gives_real_model_with_named_nodes_in_fp32(task: OnnxModelTask, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    ranking = analyse_sensitivity(task.model_path, task, SETTINGS, cache=cache).ranking
    deploy = DeployConfig(precision="int8-static", calibration_size=16, keep_fp32_top_k=2)
    (transform,) = deploy_transforms(deploy, cache=cache)
    dst = tmp_path / "mixed.onnx"
    transform.apply(task.model_path, dst, deploy, task)
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    kept = fp32_nodes_of(dst)
    report = analyse_sensitivity(task.model_path, task, SETTINGS, cache=cache)
    assert kept == report.members(ranking[:2]) and set(ranking[:2]) <= set(kept)
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    for name in ranking:  # the candidates' weight nodes
        node = by_name[name]
        weight = node.input[1]
        if name in kept:  # a float node: float weights straight from an initializer (activations may
            assert weight in inits and weight not in producers  # arrive dequantised from int8 neighbours)
            assert next(i for i in model.graph.initializer if i.name == weight).data_type == TensorProto.FLOAT
        else:  # quantised: int8 weights through DequantizeLinear
            assert producers[weight].op_type == "DequantizeLinear", f"{name} should be quantised"
    # it runs in ONNX Runtime, and scores what the ranking measured for that very variant: with the
    # top two candidates in fp32 only the third is int8, i.e. the analysis's variant of the third
    (rest,) = [n for n in report.nodes if n.name not in ranking[:2]]
    scores = task.evaluate(dst)
    assert scores["fidelity_top1"] == pytest.approx(rest.score)
    assert rest.cosine_gain is not None and rest.cosine_gain > 0  # its error against fp32, as ranked
    assert 1.0 - scores["fidelity_cosine"] == pytest.approx(rest.cosine_gain, rel=1e-3)
    tags = fp32_node_tags(dst)
    assert tags == {"fp32_nodes": ",".join(kept), "fp32_node_count": str(len(kept))}
    # all-int8 records an empty list; fp32 deployables record nothing
    plain = tmp_path / "int8.onnx"
    deploy_transforms(DeployConfig(precision="int8-static", calibration_size=16))[0].apply(
        task.model_path, plain, DeployConfig(precision="int8-static", calibration_size=16), task)
    assert fp32_nodes_of(plain) == [] and fp32_node_tags(task.model_path) == {}
    assert task.evaluate(plain)["fidelity_cosine"] < scores["fidelity_cosine"]  # keeping two in fp32 helps
    assert any(p.key == FP32_NODES_KEY for p in onnx.load(str(plain)).metadata_props)


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"precision": "int8-dynamic", "keep_fp32_top_k": 2}, "need precision int8-static"),
    ({"precision": "fp32", "keep_fp32_fraction": 0.2}, "need precision int8-static"),
    ({"precision": "int8-static", "keep_fp32_top_k": 2, "keep_fp32_fraction": 0.2}, "alternatives"),
    ({"precision": "int8-static", "keep_fp32_top_k": 2, "keep_fp32": "depthwise"}, "alternatives"),
])
def test_knob_combinations_rejected(knobs: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidConfig, match=reason):
        check_deploy(DeployConfig(**knobs), device_cores=2, device_precisions=("fp32", "int8"),
                     task_can_prune_channels=False, task_can_finetune=False)
    check_deploy(DeployConfig(precision="int8-static", keep_fp32_fraction=0.5), device_cores=2,
                 device_precisions=("fp32", "int8"), task_can_prune_channels=False, task_can_finetune=False)


def test_cli_table_json_figure(task: OnnxModelTask, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.npz"
    args = ["sensitivity", str(task.model_path), "--data", str(data), "--calibration-size", "16",
            "--eval-size", "24", "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--json", str(tmp_path / "s.json"), "--figure", str(tmp_path / "s.html")]) == 0
    out = capsys.readouterr().out
    assert "fidelity_top1: fp32 1.0000, all-int8" in out and "conv1" in out and "fc" in out
    doc = json.loads((tmp_path / "s.json").read_text())
    assert sorted(n["name"] for n in doc["nodes"]) == ["conv1", "dw", "fc"]
    html = (tmp_path / "s.html").read_text()
    assert "<script src=\"https://cdn" not in html and len(html) > 1_000_000  # plotly.js inline
    sensitivity._MEMO.clear()
    assert main([*args, "--no-latency", "--metric", "fidelity_top1"]) == 0  # cached: same ranking
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines()[2:5]] == [n["name"] for n in doc["nodes"]]


def _no_weights_model(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 12, 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_cli_bad_input_is_one_line_exit_2(task: OnnxModelTask, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "d.npz")
    np.savez(tmp_path / "wrong.npz", y=images(8))
    cases = [
        ([str(tmp_path / "missing.onnx"), "--data", data], "no such file"),
        ([str(task.model_path), "--data", str(tmp_path / "nope.npz")], "no such file"),
        ([str(task.model_path), "--data", str(tmp_path / "wrong.npz")], "do not match"),
        ([str(task.model_path), "--data", data, "--calibration-size", "0"], "at least 1"),
        ([str(_no_weights_model(tmp_path / "relu.onnx")), "--data", data], "nothing to rank"),
    ]
    for argv, msg in cases:
        assert main(["sensitivity", *argv, "--cache-dir", str(tmp_path / "cache"), "--no-latency"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err and err.startswith("edge-search sensitivity: error:")
    with pytest.raises(SystemExit) as exc:
        main(["sensitivity", str(task.model_path), "--data", data, "--metric", "top1"])
    assert exc.value.code == 2


def test_no_calibration_data_is_input_error(task: OnnxModelTask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task, "calibration_batches", lambda n, b=1: iter(()))
    with pytest.raises(InputError, match="calibration data"):
        analyse_sensitivity(task.model_path, task, SETTINGS)


def test_one_ranking_serves_both_formats_and_activation_types() -> None:
    """QDQ/QOperator and int8/uint8 activations share a ranking; per-channel and calibration do not."""
    base = DeployConfig(precision="int8-static", keep_fp32_top_k=4)
    same = [base.model_copy(update=u) for u in ({"quant_format": "qoperator"}, {"activation_type": "uint8"})]
    assert all(QuantSettings.from_deploy(d) == QuantSettings.from_deploy(base) for d in same)
    other = [base.model_copy(update=u) for u in ({"per_channel": False}, {"calibration_method": "percentile"},
                                                 {"bias_correction": False})]
    assert all(QuantSettings.from_deploy(d) != QuantSettings.from_deploy(base) for d in other)


def test_analysis_leaves_no_temporary_folder(task: OnnxModelTask, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cache and without one (the report is then memoised in the process), the command and
    the library remove every temporary folder they made."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    report = analyse_sensitivity(task.model_path, task, SETTINGS)
    assert report.ranking
    assert analyse_sensitivity(task.model_path, task, SETTINGS) is report  # memoised, not redone
    assert main(["sensitivity", str(task.model_path), "--data", str(tmp_path / "d.npz"), "--no-latency",
                 "--calibration-size", "16", "--eval-size", "8", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert sorted(p.name for p in scratch.iterdir()) == []
