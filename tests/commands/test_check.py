"""`edge-search check`: exit codes, one-line errors, and the three reports."""

from __future__ import annotations

import json
import runpy
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edge_search.cli import main

ROOT = Path(__file__).resolve().parents[2]
build_reference_model = runpy.run_path(str(ROOT / "scripts/make_reference_model.py"))["build_reference_model"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `edge-search check` through the real command table (`edge_search.cli.main`)."""
    code = main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    return build_reference_model(tmp_path / "ref.onnx")


def _budgets(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "budgets.yaml"
    p.write_text("schema_version: 1\n" + body)
    return p


def test_size_budgets_exit_0_and_1_with_reports(tmp_path: Path, model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ok = _budgets(tmp_path, "models:\n  - model: ref.onnx\n    budgets: {size_mb: 5}\n")
    code, out, _ = run_cli([str(ok), "--junit", "j.xml", "--summary", "s.md", "--json", "r.json"], capsys)
    assert code == 0 and "all within budget" in out
    bad = _budgets(tmp_path, "models:\n  - model: ref.onnx\n    budgets: {size_mb: 1}\n")
    code, out, _ = run_cli([str(bad), "--junit", "j.xml", "--summary", "s.md", "--json", "r.json"], capsys)
    assert code == 1 and "FAIL" in out
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    case = suite.find("testcase")
    assert case is not None and case.get("classname") == "ref" and case.get("name") == "size_mb <= 1"
    assert case.find("failure") is not None
    summary = (tmp_path / "s.md").read_text()
    assert summary.count("edge-search check") == 2  # appended, as $GITHUB_STEP_SUMMARY expects
    assert "| ref | `size_mb <= 1` |" in summary
    bench = json.loads((tmp_path / "r.json").read_text())
    assert bench[0]["name"] == "ref size_mb" and bench[0]["unit"] == "MB" and bench[0]["value"] > 2


def test_latency_budgets_measured_for_real(tmp_path: Path, model: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    same = tmp_path / "same.onnx"
    same.write_bytes(model.read_bytes())
    b = _budgets(tmp_path, "models:\n  - model: ref.onnx\n    budgets:\n"
                           "      latency_ms: ['+50%', '<= 1000']\n      peak_memory_mb: 2000\n")
    code, out, err = run_cli([str(b), "--baseline-model", str(same), "--min-rounds", "2", "--max-rounds", "2",
                              "--json", "r.json", "--save-baseline", "base.json"], capsys)
    assert code == 0, out + err
    assert "PASS  ref: latency_ms <= 1000" in out and "latency measured" in out
    names = [e["name"] for e in json.loads((tmp_path / "r.json").read_text())]
    assert names == ["ref latency_ms", "ref latency_p90_ms", "ref peak_memory_mb", "ref size_mb"]
    assert json.loads((tmp_path / "base.json").read_text())["models"]["ref"]["rounds"]


def test_emulated_device_report_says_emulated(tmp_path: Path, model: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    b = _budgets(tmp_path, "models:\n  - model: ref.onnx\n    budgets: {latency_ms: 100000}\n")
    code, out, err = run_cli([str(b), "--device", "raspberry-pi-4", "--min-rounds", "2", "--max-rounds", "2",
                              "--summary", "s.md", "--junit", "j.xml"], capsys)
    assert code == 0, out + err
    assert "latency emulated" in out
    assert "**emulated**" in (tmp_path / "s.md").read_text()
    assert 'name="latency_source" value="emulated"' in (tmp_path / "j.xml").read_text()


@pytest.mark.parametrize(("body", "args", "expected"), [
    ("models: [{model: ref.onnx, budgets: {latency_ms: soon}}]\n", [], "budgets.yaml: models[0] (ref.onnx)"),
    ("models: [{model: missing.onnx}]\n", [], "missing.onnx: no such model file or bundle"),
    ("models: [{model: ref.onnx}]\n", ["--device", "toaster"], "unknown device 'toaster'"),
    ("device: toaster\nmodels: [{model: ref.onnx}]\n", [], "unknown device 'toaster'"),
    ("models: [{model: ref.onnx}]\n", ["--baseline-model", "old.onnx"], "old.onnx: no such baseline model"),
    ("models: [{model: ref.onnx}]\n", ["--baseline", "nope.json"], "nope.json: no such baseline file"),
    ("models: [{model: ref.onnx}]\n", ["--min-rounds", "1"], "--min-rounds/--max-rounds"),
    ("models: {model: ref.onnx}\n", [], "models: Input should be a valid list"),
])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str],
                                         body: str, args: list[str], expected: str) -> None:
    b = _budgets(tmp_path, body)
    code, _out, err = run_cli([str(b), *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err


def test_missing_budgets_file_exits_2(tmp_path: Path, model: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli([str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "no such budgets file" in err and len(err.strip().splitlines()) == 1


def test_shipped_budget_files_are_valid(tmp_path: Path) -> None:
    """ci/reference-budgets.yaml loads beside generated models; examples/ci/budgets.yaml is well-formed."""
    import yaml

    from edge_search.check.budgets import BudgetsFile, load_budgets

    build_reference_model(tmp_path / "reference.onnx")
    (tmp_path / "reference-baseline.onnx").write_bytes((tmp_path / "reference.onnx").read_bytes())
    (tmp_path / "b.yaml").write_text((ROOT / "ci/reference-budgets.yaml").read_text())
    spec = load_budgets(tmp_path / "b.yaml")
    assert next(b.label for b in spec.budgets_for(spec.models[0])) == "latency_ms +10%"
    example = BudgetsFile.model_validate(yaml.safe_load((ROOT / "examples/ci/budgets.yaml").read_text()))
    assert {b.metric for b in example.budgets_for(example.models[0])} >= {"latency_ms", "accuracy"}
