"""The devices, predict and calibrate commands: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_search.cli import main
from tests.devices.tiny_conv import tiny_conv


def test_devices_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in ("host", "jetson-nano", "raspberry-pi-4", "intel-n100"):
        assert name in out
    assert main(["devices", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in data["profiles"]}
    assert {
        "host",
        "jetson-nano",
        "jetson-orin-nano",
        "raspberry-pi-4",
        "raspberry-pi-5",
        "intel-n100",
    } <= names


def test_devices_with_a_bad_user_profile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text(
        "schema_version: 1\nname: bad\ncpu: {architecture: x86_64, core_type: x, "
        "cores: 2, clock_ghz: -1}\nmemory: {ram_mb: 100, bandwidth_gb_s: 1, "
        "reserve_mb: 0}\nlatency: {method: emulated}\n"
    )
    assert main(["devices", "--profiles", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "cpu.clock_ghz" in err


def test_predict_graph_only_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_conv(tmp_path / "m.onnx")
    assert (
        main(
            ["predict", str(model), "--device", "raspberry-pi-4", "--threads", "4", "--graph-only", "--json"]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["source"] == "emulated" and stats["extra"]["method"] == "graph"
    assert stats["ci_low_ms"] < stats["median_ms"] < stats["ci_high_ms"]


def test_predict_profiled_prints_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    model = tiny_conv(tmp_path / "m.onnx")
    assert (
        main(["predict", str(model), "--device", "jetson-nano", "--provider", "CUDAExecutionProvider"]) == 0
    )
    out = capsys.readouterr().out
    assert "jetson-nano" in out and "ms  [" in out and "fits" in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["predict", "missing.onnx", "--device", "raspberry-pi-4"], "no such model file"),
        (["predict", "missing.onnx", "--device", "no-such-board"], "unknown device"),
        (["calibrate", "--device", "no-such-board"], "unknown device"),
    ],
)
def test_bad_input_exits_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_predict_too_many_threads_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_conv(tmp_path / "m.onnx")
    assert main(["predict", str(model), "--device", "raspberry-pi-4", "--threads", "8", "--graph-only"]) == 2
    assert "exceed the 4 cores" in capsys.readouterr().err
