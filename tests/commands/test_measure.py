"""`edge-search measure`: exit codes, one-line errors, JSON output, and two concurrent CLIs never overlap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_search.cli import main
from edge_search.devices.stats import LatencyStats


def _gemm(path: Path, batch: int | str) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["h2"]),
             helper.make_node("MatMul", ["h2", "w"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 256])
    graph = helper.make_graph(nodes, "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli_models")
    _gemm(d / "static.onnx", 32)
    _gemm(d / "dynamic.onnx", "N")
    (d / "corrupt.onnx").write_bytes(b"definitely not onnx" * 20)
    return d


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock folder of the tests' own: they never queue behind a real measurement on this machine."""
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))


FAST = ["--max-time", "1", "--precision-target", "0.05"]


def test_measure_json(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["measure", str(model_dir / "static.onnx"), "--threads", "1", "--json", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    s = LatencyStats.from_json(out.strip())
    assert s.device == "host" and len(s.samples_ms) >= 20 and s.median_ms > 0
    assert s.knobs["intra_op_threads"] == 1 and s.knobs["graph_optimization"] == "all"
    assert s.extra["tries"] >= 2 and s.extra["interval"]["processes"] == 2  # two processes by default


def test_measure_processes_option(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["measure", str(model_dir / "static.onnx"), "--processes", "3", "--json", *FAST])
    s = LatencyStats.from_json(capsys.readouterr().out.strip())
    assert code == 0 and s.extra["interval"]["processes"] == 3
    assert main(["measure", str(model_dir / "static.onnx"), "--processes", "0"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err


def test_measure_human_output_with_shape(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["measure", str(model_dir / "dynamic.onnx"), "--shape", "x=4,256", "--graph-opt", "basic",
                 *FAST])
    out = capsys.readouterr().out
    assert code == 0
    for label in ("median", "95% interval", "processes", "p90 / p95 / p99", "CV", "samples", "warm-up", "session load",
                  "first inference", "peak memory", "CPU", "cores used", "ONNX Runtime", "CPU steal",
                  "lease wait", "warnings"):
        assert label in out


@pytest.mark.parametrize(("args", "needle"), [
    (["missing.onnx"], "no such model file"),
    (["corrupt.onnx"], "cannot load ONNX model"),
    (["dynamic.onnx"], "input 'x' has a dynamic dimension 0 ('N')"),
    (["static.onnx", "--threads", str((os.cpu_count() or 1) + 1)], "exceed the"),
    (["static.onnx", "--shape", "x=1;2"], "--shape"),
    (["static.onnx", "--device", "no-such-board"], "unknown device 'no-such-board'"),
])
def test_bad_input_is_one_line_exit_2(model_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                      needle: str) -> None:
    args = [str(model_dir / args[0]), *args[1:]]
    code = main(["measure", *args, *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edge-search measure: error: ")
    assert needle in err


def test_two_concurrent_cli_measurements_never_overlap(model_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "edge_search.cli", "measure", str(model_dir / "static.onnx"), "--json",
           "--max-time", "0.5", "--precision-target", "1e-9"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    stats = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        stats.append(LatencyStats.from_json(out.strip()))
    a, b = sorted(stats, key=lambda s: s.started_at)
    assert a.ended_at <= b.started_at, (a.started_at, a.ended_at, b.started_at, b.ended_at)
    # The repetition phase alone is 0.5 s (precision target unreachable), so the second one waited.
    assert b.lease_wait_s > 0.3
    assert a.stop_reason == b.stop_reason == "time_cap"
