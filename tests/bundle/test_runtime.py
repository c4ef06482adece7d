"""The board runtime: a single bundle, and switching between a front's configurations to hold a
latency target under an injected slowdown, without flapping."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_search.bundle import runtime
from edge_search.bundle.runtime import LatencyController, SwitchingRuntime, load_front, open_runtime

RUNTIME_FILE = Path(runtime.__file__)


def _tiny_model(path: Path) -> None:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "tiny", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _front(folder: Path, configs: list[tuple[float, float]], shapes: list[list[int]] | None = None) -> Path:
    """A `--pareto` bundle folder with one tiny model per (accuracy, latency_ms) configuration,
    measured at `shapes[i]` (default [1, 4] each)."""
    entries = []
    for i, (acc, lat) in enumerate(configs):
        sub = folder / f"trial-{i:04d}"
        sub.mkdir(parents=True)
        _tiny_model(sub / "model.onnx")
        manifest = {"schema_version": 1, "kind": "edge-search-bundle", "study": "t", "trial": i,
                    "model": {"file": "model.onnx"}, "batch_size": 1, "accuracy": acc,
                    "session_options": {"intra_op_threads": 1, "inter_op_threads": 1,
                                        "graph_optimization": "all", "execution_mode": "sequential",
                                        "allow_spinning": False},
                    "inputs": [{"name": "input", "type": "tensor(float)",
                                "shape": shapes[i] if shapes else [1, 4]}],
                    "latency": {"median_ms": lat, "source": "measured", "device": "test"}}
        (sub / "bundle.json").write_text(json.dumps(manifest))
        entries.append({"trial": i, "dir": sub.name, "accuracy": acc, "latency_ms": lat})
    (folder / "front.json").write_text(json.dumps({"schema_version": 1, "configurations": entries}))
    return folder


class FakeClock:
    """The runtime's clock, advanced only by the simulated inference time (no sleeping, no noise)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Slowable:
    """Wraps a session: each run takes the configuration's base latency times a shared factor on
    the injected clock, as a throttled or loaded device makes every configuration proportionally
    slower."""

    def __init__(self, session: Any, base_ms: float, factor: list[float], clock: FakeClock) -> None:
        self.session, self.base_ms, self.factor, self.clock = session, base_ms, factor, clock

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, outputs: Any, feeds: Any) -> Any:
        out = self.session.run(outputs, feeds)
        self.clock.now += self.base_ms * self.factor[0] / 1000.0
        return out


def test_switching_runtime_holds_the_target_under_a_slowdown_and_returns(tmp_path: Path) -> None:
    # most accurate first: 4 ms, 2 ms, 0.7 ms at normal speed; target 8 ms
    base = {0.99: 4.0, 0.97: 2.0, 0.90: 0.7}
    folder = _front(tmp_path / "front", [(a, lat) for a, lat in base.items()])
    factor = [1.0]
    clock = FakeClock()
    rt = SwitchingRuntime(
        load_front(folder), target_ms=8.0, window=8, headroom=0.15, min_dwell_s=0.4, clock=clock,
        session_factory=lambda b: Slowable(runtime.open_session(b), base[b.accuracy], factor, clock))
    feeds = rt.current.example_feeds()
    phases: list[tuple[float, float]] = [(1.0, 1.2), (2.5, 2.0), (1.0, 2.0)]  # (slowdown, seconds)
    starts: list[float] = []
    seen: list[tuple[int, float, int]] = []  # (phase, latency ms, configuration index)
    for p, (f, seconds) in enumerate(phases):
        factor[0] = f
        starts.append(clock.now)
        while clock.now < starts[-1] + seconds:
            t0, idx = clock.now, rt.controller.current
            rt.run(feeds)
            seen.append((p, (clock.now - t0) * 1000.0, idx))
    ends = [next(i for q, _, i in reversed(seen) if q == p) for p in range(3)]
    moves = [(rt.bundles[s.from_index].accuracy, rt.bundles[s.to_index].accuracy, s.reason) for s in rt.switches]
    assert [rt.bundles[i].accuracy for i in ends] == [0.99, 0.97, 0.99], moves
    # exactly one move down (to the most accurate configuration that fits, not the fastest) and
    # one back up once the slowdown is over: no flapping
    assert moves == [(0.99, 0.97, "over target"), (0.97, 0.99, "headroom")], moves
    down, up = rt.switches
    # down as soon as most of the window (5 of 8) is slow: the fifth 10 ms inference of the slowdown
    assert down.at_s == pytest.approx(starts[1] + 5 * 0.010) and down.slowdown == pytest.approx(2.5)
    # up as soon as most of the window is back at normal speed (the dwell of 0.4 s has long passed)
    assert up.at_s == pytest.approx(starts[2] + 5 * 0.002) and up.slowdown == pytest.approx(1.0)
    assert max(lat for q, lat, i in seen if q == 1 and rt.bundles[i].accuracy == 0.97) <= 8.0


def test_switching_runtime_refuses_a_front_without_one_input_spec(tmp_path: Path) -> None:
    """Configurations measured at other input shapes (a searched batch size or resolution) cannot
    take the same feeds: the runtime says so instead of failing mid-switch."""
    folder = _front(tmp_path / "front", [(0.99, 2.0), (0.9, 1.0)], shapes=[[1, 4], [8, 4]])
    with pytest.raises(ValueError, match=r"trial 0: input tensor\(float\) \[1, 4\]; trial 1: input "
                                         r"tensor\(float\) \[8, 4\]"):
        open_runtime(folder, target_ms=5.0)
    same = _front(tmp_path / "same", [(0.99, 2.0), (0.9, 1.0)], shapes=[[8, 4], [8, 4]])
    assert isinstance(open_runtime(same, target_ms=5.0), SwitchingRuntime)


def test_controller_backs_off_when_predictions_keep_failing() -> None:
    """A configuration that looks affordable from the faster one but is not (it slows more than the
    shared factor predicts): probes up get rarer (doubling dwell) instead of flapping every dwell."""
    ctl = LatencyController([(0.99, 5.0), (0.90, 2.0)], target_ms=6.0, window=4, headroom=0.15,
                            min_dwell_s=1.0, max_backoff=8)
    now = 0.0
    while now < 120.0:
        lat = 7.5 if ctl.current == 0 else 2.0  # config 0 misses the target whenever it runs
        ctl.observe(lat, now)
        now += 0.05
    ups = [s.at_s for s in ctl.switches if s.reason == "headroom"]
    gaps = np.diff(ups)
    assert len(ups) < 20  # without the back-off: one probe per ~1.2 s, ~100 in 120 s
    assert gaps[-1] >= 7.5 and all(b >= a - 0.3 for a, b in itertools.pairwise(gaps))


def test_controller_starts_on_the_most_accurate_configuration_that_fits() -> None:
    ctl = LatencyController([(0.99, 9.0), (0.97, 3.0), (0.90, 1.0)], target_ms=5.0)
    assert ctl.current == 1
    assert LatencyController([(0.99, 9.0), (0.97, 7.0)], target_ms=5.0).current == 1  # none fit: fastest


def test_single_bundle_runs_with_recorded_options(tmp_path: Path) -> None:
    folder = _front(tmp_path / "f", [(0.9, 1.0)]) / "trial-0000"
    rt = open_runtime(folder)
    assert isinstance(rt, runtime.Runtime)
    x = np.array([[-1.0, 0.0, 2.0, -3.0], [1.0, 1.0, -1.0, 0.5]], dtype=np.float32)
    assert np.array_equal(rt.predict(x), np.maximum(x, 0))


def test_runtime_file_runs_standalone_without_edge_search_torch_optuna_or_mlflow(tmp_path: Path) -> None:
    """The copy `edge-search export` puts into a bundle runs on a board with numpy + onnxruntime."""
    folder = _front(tmp_path / "front", [(0.99, 0.5), (0.9, 0.1)])
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['runtime.py', {str(folder)!r}, '--seconds', '0.3', '--target-ms', '5']\n"
        f"try:\n    runpy.run_path({str(RUNTIME_FILE)!r}, run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = ('edge_search', 'torch', 'optuna', 'mlflow', 'plotly', 'pydantic')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert heavy == [], heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "runs, median" in proc.stdout and "now: trial 0" in proc.stdout

