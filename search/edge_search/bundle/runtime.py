"""A small runtime for the board: run an exported bundle with its recorded session options, or
switch between the configurations of a `--pareto` bundle to hold a latency target.

Needs only numpy and onnxruntime (no torch, optuna or mlflow), and imports nothing else from
edge-search, so `edge-search export` copies this very file into every bundle: on the board,
`python runtime.py BUNDLE_DIR --target-ms 5` works without installing edge-search.

Switching (`SwitchingRuntime`): every inference is timed; `LatencyController` keeps a window of
the current configuration's latencies, estimates how much the device has slowed down against that
configuration's expected latency (thermal throttling and background load slow every
configuration by a similar factor), predicts every other configuration's latency from it, and
picks the most accurate one predicted to meet the target. It does not flap: a configuration is
left only when its observed median exceeds the target, is entered only when predicted to be
`headroom` below it (hysteresis), a configuration stays for at least `min_dwell_s` before moving
to a slower one, and a move up that fails at once doubles that dwell (back-off).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# -- the bundle format: the one schema `edge-search export` writes and the runtime and
# `edge-search check` read (kept here because this file must stand alone on a board) --------------

BUNDLE_FILE = "bundle.json"
"""The manifest of one bundle folder."""
FRONT_FILE = "front.json"
"""The list of configurations of a `--pareto` bundle folder."""
BUNDLE_SCHEMA = 1
BUNDLE_KIND = "edge-search-bundle"
FRONT_KIND = "edge-search-front"
MODEL_FILE = "model.onnx"
"""The model's file in a bundle folder, unless the manifest's ``model.file`` names another."""
MANIFEST_FILES = (BUNDLE_FILE, "manifest.json")
"""Manifest names a bundle folder is read by, in order (``manifest.json``: bundles made by hand)."""

_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class Bundle:
    """One exported configuration: the model file and how it must be run."""

    path: Path
    """The bundle folder."""
    trial: int
    model_path: Path
    session_options: dict[str, Any]
    inputs: list[dict[str, Any]]
    """`{"name", "type", "shape"}` per graph input, with the concrete shape it was measured at."""
    batch_size: int
    latency_ms: float
    """Median latency on the device it was measured on (or predicted for)."""
    accuracy: float
    latency_source: str
    device: str
    manifest: dict[str, Any] = field(default_factory=dict)

    def example_feeds(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the recorded shapes and types (for smoke runs and calibration)."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            dtype = _ORT_TYPES.get(spec["type"], np.float32)
            shape = tuple(int(d) for d in spec["shape"])
            if np.issubdtype(dtype, np.floating):
                feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[spec["name"]] = rng.integers(0, 2, shape).astype(dtype)
        return feeds


def read_manifest(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(path, content) of a bundle folder's manifest (the first of `MANIFEST_FILES` there), or None.

    Raises `ValueError` when it is not valid JSON or not a JSON object.
    """
    for name in MANIFEST_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(manifest, dict):
            raise ValueError(f"{path}: a bundle manifest must be a JSON object")
        return path, manifest
    return None


def manifest_model_file(manifest: Mapping[str, Any]) -> str:
    """The model's file name in the bundle folder (``model.file``, default `MODEL_FILE`)."""
    model = manifest.get("model")
    if isinstance(model, dict) and isinstance(model.get("file"), str):
        return str(model["file"])
    return MODEL_FILE


def manifest_session_options(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ONNX Runtime session options the latency was measured with (``session_options``, or
    ``session`` in a hand-made manifest); None when the manifest has none."""
    raw = manifest.get("session_options", manifest.get("session"))
    return dict(raw) if isinstance(raw, dict) else None


def manifest_shapes(manifest: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Input name -> the concrete shape it was measured at, from ``inputs``: a list of ``{name, shape}``
    (as export writes it) or a mapping; entries without a positive integer shape are left out."""
    inputs = manifest.get("inputs")
    items: list[tuple[Any, Any]] = []
    if isinstance(inputs, list):
        items = [(i.get("name"), i.get("shape")) for i in inputs if isinstance(i, dict)]
    elif isinstance(inputs, dict):
        items = [(k, v.get("shape") if isinstance(v, dict) else v) for k, v in inputs.items()]
    return {str(name): tuple(shape) for name, shape in items
            if name and isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)}


def load_bundle(path: str | Path) -> Bundle:
    """Read `bundle.json` from a bundle folder (written by `edge-search export`)."""
    folder = Path(path)
    manifest = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
    if manifest.get("schema_version") != BUNDLE_SCHEMA:
        raise ValueError(f"{folder}: bundle schema_version {manifest.get('schema_version')} is not "
                         f"supported (expected {BUNDLE_SCHEMA})")
    lat = manifest["latency"]
    return Bundle(path=folder, trial=int(manifest["trial"]), model_path=folder / manifest_model_file(manifest),
                  session_options=dict(manifest["session_options"]), inputs=list(manifest["inputs"]),
                  batch_size=int(manifest.get("batch_size", 1)), latency_ms=float(lat["median_ms"]),
                  accuracy=float(manifest.get("accuracy", float("nan"))), latency_source=str(lat["source"]),
                  device=str(lat["device"]), manifest=manifest)


def load_front(path: str | Path) -> list[Bundle]:
    """Every configuration of a `--pareto` bundle folder, in the order `front.json` lists them."""
    folder = Path(path)
    front = json.loads((folder / FRONT_FILE).read_text(encoding="utf-8"))
    return [load_bundle(folder / entry["dir"]) for entry in front["configurations"]]


def check_one_input_spec(bundles: Sequence[Bundle]) -> None:
    """Raise `ValueError` unless every bundle takes the same inputs (names, types, shapes): the
    switching runtime feeds whichever configuration is current the same arrays."""
    def spec(b: Bundle) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(str(i.get("name")), str(i.get("type")), tuple(int(d) for d in i.get("shape") or ()))
                for i in b.inputs]

    def text(b: Bundle) -> str:
        return ", ".join(f"{n} {t} {list(sh)}" for n, t, sh in spec(b)) or "no inputs"

    for b in bundles[1:]:
        if spec(b) != spec(bundles[0]):
            raise ValueError(f"the front's configurations take different inputs (trial {bundles[0].trial}: "
                             f"{text(bundles[0])}; trial {b.trial}: {text(b)}), so one input cannot be "
                             "switched between them; export single trials, or a front of one input shape")


def session_options(opts: Mapping[str, Any]) -> ort.SessionOptions:
    """`SessionOptions` with every knob set explicitly, as the measurement worker set them."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(opts.get("intra_op_threads", 1))
    so.inter_op_num_threads = int(opts.get("inter_op_threads", 1))
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[str(opts.get("graph_optimization", "all"))]
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if opts.get("execution_mode") == "parallel"
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    spin = "1" if opts.get("allow_spinning", True) else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def open_session(bundle: Bundle) -> Any:
    """An `InferenceSession` for the bundle's model with its recorded options and providers."""
    providers = list(bundle.session_options.get("providers") or ["CPUExecutionProvider"])
    return ort.InferenceSession(str(bundle.model_path), sess_options=session_options(bundle.session_options),
                                providers=providers)


class Runtime:
    """Runs one bundle; `run` takes input feeds, `predict` a single input array."""

    def __init__(self, bundle: Bundle, session: Any | None = None) -> None:
        self.bundle = bundle
        self.session = session if session is not None else open_session(bundle)
        self.input_name: str = self.session.get_inputs()[0].name

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, dict(feeds)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """First output for one input array, in chunks of the bundle's batch size (as evaluated)."""
        step = max(1, self.bundle.batch_size)
        outs = [np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(x[i:i + step])})[0])
                for i in range(0, len(x), step)]
        return np.concatenate(outs)


# -- switching ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Switch:
    """One change of configuration, for logs and tests."""

    at_s: float
    from_index: int
    to_index: int
    reason: str
    observed_ms: float
    slowdown: float


class LatencyController:
    """Chooses a configuration from live latency feedback; pure logic, time passed in.

    `configs` are (accuracy, expected latency ms) pairs. Call `observe(latency_ms, now_s)` after
    every inference of the current configuration; it returns the index to run next.
    """

    def __init__(self, configs: Sequence[tuple[float, float]], target_ms: float, *, window: int = 16,
                 headroom: float = 0.15, min_dwell_s: float = 1.0, max_backoff: int = 8) -> None:
        if not configs:
            raise ValueError("no configuration to choose from")
        self.accuracy = [float(a) for a, _ in configs]
        self.expected = [max(float(e), 1e-9) for _, e in configs]
        self.target_ms = float(target_ms)
        self.window = window
        self.headroom = headroom
        self.min_dwell_s = min_dwell_s
        self.max_backoff = max_backoff
        self._backoff = 1
        self._samples: deque[float] = deque(maxlen=window)
        self._since = -float("inf")
        self._last_up: tuple[float, int] | None = None
        self.switches: list[Switch] = []
        self.current = self.best_for(1.0)

    def best_for(self, slowdown: float) -> int:
        """Most accurate configuration predicted to run `headroom` below the target; else the fastest."""
        bound = self.target_ms * (1.0 - self.headroom)
        ok = [i for i in range(len(self.expected)) if self.expected[i] * slowdown <= bound]
        if not ok:
            return min(range(len(self.expected)), key=lambda i: self.expected[i])
        return max(ok, key=lambda i: (self.accuracy[i], -self.expected[i]))

    @property
    def slowdown(self) -> float:
        """Observed median over expected latency of the current configuration (1.0 until known)."""
        if len(self._samples) < max(3, self.window // 2):
            return 1.0
        return statistics.median(self._samples) / self.expected[self.current]

    def observe(self, latency_ms: float, now_s: float) -> int:
        if self._since == -float("inf"):
            self._since = now_s
        self._samples.append(float(latency_ms))
        if len(self._samples) < self.window:
            return self.current
        observed = statistics.median(self._samples)
        slowdown = observed / self.expected[self.current]
        dwell = now_s - self._since
        if observed > self.target_ms:
            choice = self.best_for(slowdown)
            if choice != self.current and self.expected[choice] < self.expected[self.current]:
                if self._last_up is not None and self._last_up[1] == self.current and \
                        now_s - self._last_up[0] < 2 * self.min_dwell_s * self._backoff:
                    self._backoff = min(self.max_backoff, self._backoff * 2)  # that move up failed
                return self._switch(choice, now_s, "over target", observed, slowdown)
        elif dwell >= self.min_dwell_s * self._backoff:
            choice = self.best_for(slowdown)
            if self.accuracy[choice] > self.accuracy[self.current]:
                self._last_up = (now_s, choice)
                return self._switch(choice, now_s, "headroom", observed, slowdown)
            if dwell >= 4 * self.min_dwell_s * self._backoff:
                self._backoff = 1  # stable for a while: forget earlier failures
        return self.current

    def _switch(self, to: int, now_s: float, reason: str, observed: float, slowdown: float) -> int:
        self.switches.append(Switch(now_s, self.current, to, reason, observed, slowdown))
        self.current = to
        self._samples.clear()
        self._since = now_s
        return to


class SwitchingRuntime:
    """Runs a `--pareto` bundle, switching configurations to hold `target_ms` (see the module doc)."""

    def __init__(self, bundles: Sequence[Bundle], target_ms: float, *,
                 session_factory: Callable[[Bundle], Any] = open_session,
                 clock: Callable[[], float] = time.perf_counter, **controller: Any) -> None:
        """Raises `ValueError` when `bundles` do not share one input spec (`check_one_input_spec`)."""
        self.bundles = list(bundles)
        check_one_input_spec(self.bundles)
        self.runtimes = [Runtime(b, session_factory(b)) for b in self.bundles]
        self.clock = clock
        self.controller = LatencyController([(b.accuracy, b.latency_ms) for b in self.bundles], target_ms,
                                            **controller)

    @property
    def current(self) -> Bundle:
        return self.bundles[self.controller.current]

    @property
    def switches(self) -> list[Switch]:
        return self.controller.switches

    def calibrate(self, feeds: Mapping[str, np.ndarray] | None = None, runs: int = 20) -> list[float]:
        """Replace each configuration's expected latency by its median over `runs` live inferences here
        (for a board other than the one measured, or to start from the present conditions)."""
        medians = []
        for rt in self.runtimes:
            f = feeds if feeds is not None else rt.bundle.example_feeds()
            rt.run(f)
            times = []
            for _ in range(runs):
                t0 = self.clock()
                rt.run(f)
                times.append((self.clock() - t0) * 1000.0)
            medians.append(statistics.median(times))
        self.controller.expected = [max(m, 1e-9) for m in medians]
        self.controller.current = self.controller.best_for(1.0)
        return medians

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One inference with the current configuration; its latency feeds the controller."""
        rt = self.runtimes[self.controller.current]
        t0 = self.clock()
        out = rt.run(feeds)
        t1 = self.clock()
        self.controller.observe((t1 - t0) * 1000.0, t1)
        return out


def open_runtime(path: str | Path, target_ms: float | None = None,
                 **controller: Any) -> Runtime | SwitchingRuntime:
    """A `Runtime` for a single bundle, or a `SwitchingRuntime` for a `--pareto` folder (needs a target)."""
    folder = Path(path)
    if (folder / FRONT_FILE).exists():
        bundles = load_front(folder)
        target = target_ms if target_ms is not None else max(b.latency_ms for b in bundles)
        return SwitchingRuntime(bundles, target, **controller)
    return Runtime(load_bundle(folder))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edge_search.bundle.runtime BUNDLE` (or `python runtime.py BUNDLE` on the board): run the
    bundle on random inputs for a while and print latency and, for a front, every switch."""
    p = argparse.ArgumentParser(prog="runtime", description=main.__doc__)
    p.add_argument("bundle", type=Path)
    p.add_argument("--target-ms", type=float, default=None, help="latency target for a --pareto bundle")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--calibrate", action="store_true", help="measure every configuration here first")
    args = p.parse_args(argv)
    rt = open_runtime(args.bundle, args.target_ms)
    if isinstance(rt, SwitchingRuntime) and args.calibrate:
        print("calibrated (ms):", [round(m, 4) for m in rt.calibrate()])
    bundle = rt.current if isinstance(rt, SwitchingRuntime) else rt.bundle
    feeds = bundle.example_feeds()
    times: list[float] = []
    start = time.perf_counter()
    end = start + args.seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        rt.run(feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    print(f"{len(times)} runs, median {statistics.median(times):.4f} ms, "
          f"p90 {float(np.percentile(times, 90)):.4f} ms")
    if isinstance(rt, SwitchingRuntime):
        print(f"now: trial {rt.current.trial}; switches: {len(rt.switches)}")
        for s in rt.switches:
            print(f"  {s.at_s - start:+.2f}s trial {rt.bundles[s.from_index].trial} -> {rt.bundles[s.to_index].trial} "
                  f"({s.reason}, observed {s.observed_ms:.3f} ms, slowdown {s.slowdown:.2f})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
