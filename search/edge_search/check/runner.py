"""`run_check`: measure models (and their baselines) and decide every budget of a budgets.yaml file.

How a model is measured. A check runs *rounds*; each round measures the model once and, when the
baseline is a model of this job, the baseline once, each in a fresh worker process (a fresh
device per measurement, so an emulator's cache does not hide host noise either). The order
alternates, A B then B A (ABBA), so neither side always runs first and slow drift (a warming
chassis, a neighbour ramping up) cancels within a pair. After ``min_rounds`` rounds the budgets are
decided (`edge_search.check.budgets.decide_model`); while a latency or memory decision is still a
warning (its interval straddles the limit) more rounds are measured, up to ``max_rounds``.
The rounds are not pooled into one interval: each round is one draw of the per-process effect,
and the interval comes from the spread over rounds (see `edge_search.check.budgets`).

A stored baseline (``--baseline FILE``, written by ``--save-baseline``) holds every round's
`LatencyStats` per model; it is compared unpaired, and a baseline from another CPU or ONNX
Runtime version can warn but never fail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from edge_search.check.budgets import (
    MEASURED_METRICS,
    Budget,
    BudgetsFile,
    Decision,
    EvaluationSpec,
    ModelSpec,
    decide_model,
    exit_code,
)
from edge_search.devices.base import Device, MeasureRequest, SessionKnobs
from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError
from edge_search.schema import StrictModel, format_validation_error, validation_problem

BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND: Literal["edge-search-check-baseline"] = "edge-search-check-baseline"

DeviceFactory = Callable[[], Device]
"""Builds a fresh `Device` for one measurement (closed after it)."""
Progress = Callable[[str], None]


# --- models and bundles ------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """An ONNX file to measure, with knobs and shapes a bundle's manifest supplies (if any)."""

    onnx_path: Path
    kind: Literal["onnx", "bundle"] = "onnx"
    session: SessionKnobs | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


BUNDLE_MODEL = "model.onnx"
BUNDLE_MANIFESTS = ("bundle.json", "manifest.json")
"""Manifest names read in a bundle folder: `edge-search export` writes ``bundle.json``."""


def _manifest_shapes(inputs: Any) -> dict[str, tuple[int, ...]]:
    """Input name -> shape from a manifest's ``inputs``: a list of ``{name, shape}`` or a mapping."""
    items: list[tuple[Any, Any]] = []
    if isinstance(inputs, list):
        items = [(i.get("name"), i.get("shape")) for i in inputs if isinstance(i, dict)]
    elif isinstance(inputs, dict):
        items = [(k, v.get("shape") if isinstance(v, dict) else v) for k, v in inputs.items()]
    return {str(name): tuple(shape) for name, shape in items
            if name and isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)}


def resolve_model(path: Path) -> ResolvedModel:
    """An ONNX file as it is; a bundle folder as its model plus the manifest's session knobs and shapes.

    The manifest (``bundle.json`` as `edge-search export` writes it, or ``manifest.json``) gives
    the model file (``model.file``, default ``model.onnx``), the session knobs (``session_options``
    or ``session``: the `SessionKnobs` fields; others such as ``allow_spinning`` are ignored) and
    the measured input shapes (``inputs``). Raises `InputError` for a folder without a model.
    """
    if not path.is_dir():
        if not path.is_file():
            raise InputError(f"{path}: no such model file or bundle")
        return ResolvedModel(path)
    session: SessionKnobs | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    model_file = BUNDLE_MODEL
    for name in BUNDLE_MANIFESTS:
        mpath = path / name
        if not mpath.is_file():
            continue
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as err:
            raise InputError(f"{mpath}: not valid JSON: {err}") from None
        if not isinstance(manifest, dict):
            raise InputError(f"{mpath}: a bundle manifest must be a JSON object")
        model = manifest.get("model")
        if isinstance(model, dict) and isinstance(model.get("file"), str):
            model_file = model["file"]
        raw = manifest.get("session_options", manifest.get("session"))
        if isinstance(raw, dict):
            known = {k: v for k, v in raw.items() if k in SessionKnobs.model_fields}
            try:
                session = SessionKnobs.model_validate(known)
            except ValidationError as err:
                raise InputError(f"{mpath}: session options: {validation_problem(err).message}") from None
        shapes = _manifest_shapes(manifest.get("inputs"))
        break
    onnx_path = path / model_file
    if not onnx_path.is_file():
        raise InputError(f"{path}: a bundle folder needs {model_file}")
    return ResolvedModel(onnx_path, "bundle", session, shapes)


def model_size_mb(path: Path) -> float:
    """Size of the ONNX file in MB (10^6 bytes), as the search reports ``size_mb``."""
    return path.stat().st_size / 1e6


def evaluate_accuracy(onnx_path: Path, spec: EvaluationSpec) -> float:
    """Top-1 accuracy of the model on a task's held-out split or on an .npz file (``x``, ``y``)."""
    if spec.task is not None:
        from edge_search.tasks import create_task

        return float(create_task(spec.task).evaluate(onnx_path, spec.batch_size)["accuracy"])
    assert spec.data is not None
    import onnxruntime as ort

    try:
        with np.load(spec.data) as data:
            x, y = np.asarray(data[spec.x_key]), np.asarray(data[spec.y_key])
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{spec.data}: cannot read keys '{spec.x_key}' and '{spec.y_key}': {err}") from None
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"{spec.data}: x and y must be non-empty and of the same length")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    chunk = fixed or spec.batch_size
    preds: list[np.ndarray] = []
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk].astype(np.float32)
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.zeros((fixed - n, *xb.shape[1:]), dtype=xb.dtype)])
        out = np.asarray(sess.run(None, {inp.name: np.ascontiguousarray(xb)})[0])
        preds.append(out[:n].argmax(axis=1))
    return float((np.concatenate(preds) == y).mean())


# --- stored baselines --------------------------------------------------------------------------


class BaselineEntry(StrictModel):
    """One model's baseline: every measured round, its size and (if evaluated) its accuracy."""

    model: str
    rounds: tuple[LatencyStats, ...] = Field(min_length=2)
    size_mb: float | None = None
    accuracy: float | None = None


class BaselineFile(StrictModel):
    """``--save-baseline`` output, read back by ``--baseline``: per model name, its rounds."""

    schema_version: int = BASELINE_SCHEMA_VERSION
    kind: Literal["edge-search-check-baseline"] = BASELINE_KIND
    device: str
    created_at: float = 0.0
    models: dict[str, BaselineEntry]


def load_baseline(path: Path) -> BaselineFile:
    """Read a baseline file; a missing, foreign or malformed file is an `InputError`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such baseline file") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON baseline: {err}") from None
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise InputError(f"{path}: not an edge-search check baseline (write one with --save-baseline)")
    if data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise InputError(f"{path}: baseline schema_version {data.get('schema_version')} is not supported")
    try:
        return BaselineFile.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(str(path), err)) from None


def comparable_hosts(a: LatencyStats, b: LatencyStats) -> str | None:
    """Why two measurements' hosts are not comparable (CPU model, ONNX Runtime), or None."""
    for what, x, y in (("CPU", a.host.cpu_model, b.host.cpu_model),
                       ("ONNX Runtime", a.host.ort_version, b.host.ort_version)):
        if x and y and x != y:
            return f"baseline {what} '{x}' differs from this run's '{y}'"
    return None


# --- results -----------------------------------------------------------------------------------


@dataclass
class ModelResult:
    """Everything measured and decided for one model."""

    name: str
    model_path: Path
    decisions: list[Decision]
    candidate_rounds: list[LatencyStats] = field(default_factory=list)
    baseline_rounds: list[LatencyStats] = field(default_factory=list)
    baseline: str | None = None
    """What the baseline was: a model path (interleaved) or ``stored: FILE``; None without one."""
    size_mb: float | None = None
    baseline_size_mb: float | None = None
    accuracy: float | None = None
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """``measured`` or ``emulated``."""
        return self.candidate_rounds[0].source if self.candidate_rounds else "measured"


@dataclass
class CheckResult:
    """A whole check: the device, every model's result, and the exit code they give."""

    device: str
    models: list[ModelResult]
    started_at: float
    elapsed_s: float

    @property
    def decisions(self) -> list[Decision]:
        return [d for m in self.models for d in m.decisions]

    @property
    def exit_code(self) -> int:
        """1 when any budget failed, else 0."""
        return exit_code(self.decisions)

    @property
    def emulated(self) -> bool:
        return any(m.source == "emulated" for m in self.models)


# --- orchestration -----------------------------------------------------------------------------


def _measure(factory: DeviceFactory, request: MeasureRequest) -> LatencyStats:
    with factory() as device:
        return device.measure(request)


def _needs_rounds(budgets: Sequence[Budget]) -> bool:
    return any(b.metric in MEASURED_METRICS for b in budgets)


def _noise_note(rounds: Sequence[LatencyStats]) -> list[str]:
    warned = [s for s in rounds if s.warnings]
    if not warned:
        return []
    return [f"{len(warned)} of {len(rounds)} measurements warned, e.g. '{warned[0].warnings[0]}'"]


def check_model(spec: BudgetsFile, model: ModelSpec, factory: DeviceFactory, *,
                baseline_model: Path | None = None, stored: BaselineEntry | None = None,
                stored_origin: str = "", progress: Progress | None = None) -> ModelResult:
    """Measure one model (interleaved with its baseline model, if any) and decide its budgets."""
    t0 = time.monotonic()
    say = progress or (lambda _msg: None)
    name = model.display_name
    budgets = spec.budgets_for(model)
    m = spec.measurement
    cand = resolve_model(model.model)
    session = model.session or cand.session or spec.session
    shapes = {**cand.shapes, **model.shapes}

    def request(path: Path, knobs: SessionKnobs) -> MeasureRequest:
        return MeasureRequest(model_path=path, session=knobs, shapes=shapes,
                              precision_target=m.precision_target, max_time_s=m.max_time_s,
                              warmup_min_s=0.1, priority=0)

    base_path = model.baseline_model or baseline_model
    base: ResolvedModel | None = resolve_model(base_path) if base_path is not None else None
    cand_req = request(cand.onnx_path, session)
    base_req = None
    if base is not None:
        base_req = request(base.onnx_path, model.baseline_session or base.session or session)

    result = ModelResult(name, model.model, [], size_mb=model_size_mb(cand.onnx_path))
    if base is not None:
        result.baseline = str(base_path)
        result.baseline_size_mb = model_size_mb(base.onnx_path)
    elif stored is not None:
        result.baseline = f"stored: {stored_origin}"
        result.baseline_rounds = list(stored.rounds)
        result.baseline_size_mb = stored.size_mb
    if model.evaluation is not None and any(b.metric == "accuracy" for b in budgets):
        say(f"{name}: evaluating accuracy")
        result.accuracy = evaluate_accuracy(cand.onnx_path, model.evaluation)

    comparable = True
    rounds = 0
    measured = _needs_rounds(budgets)
    while True:
        if measured:
            sides: list[tuple[str, MeasureRequest]] = [("candidate", cand_req)]
            if base_req is not None:  # A B, then B A: neither side always goes first
                pair = ("baseline", base_req)
                sides = [pair, *sides] if rounds % 2 == 0 else [*sides, pair]
            for side, req in sides:
                stats = _measure(factory, req)
                (result.candidate_rounds if side == "candidate" else result.baseline_rounds).append(stats)
            rounds += 1
            if rounds < m.min_rounds:
                continue
        if stored is not None and result.candidate_rounds:
            reason = comparable_hosts(stored.rounds[0], result.candidate_rounds[0])
            comparable = reason is None
            if reason and reason not in result.notes:
                result.notes.append(reason)
        result.decisions = decide_model(
            name, budgets, result.candidate_rounds, result.baseline_rounds or None, paired=base is not None,
            size_mb=result.size_mb, baseline_size_mb=result.baseline_size_mb, accuracy=result.accuracy,
            confidence=m.confidence, alpha=m.alpha, comparable=comparable)
        open_ = [d for d in result.decisions if not d.conclusive and d.budget.metric in MEASURED_METRICS]
        if not measured or not open_ or rounds >= m.max_rounds:
            break
        say(f"{name}: round {rounds}: {len(open_)} budget(s) too close to call, measuring another round")
    result.notes += _noise_note(result.candidate_rounds + (result.baseline_rounds if base else []))
    result.elapsed_s = time.monotonic() - t0
    say(f"{name}: {rounds} round(s), {result.elapsed_s:.1f} s: "
        + ", ".join(f"{d.budget.label} {d.status}" for d in result.decisions))
    return result


def run_check(spec: BudgetsFile, factory: DeviceFactory, *, device_name: str,
              baseline: BaselineFile | None = None, baseline_origin: str = "",
              baseline_model: Path | None = None, progress: Progress | None = None) -> CheckResult:
    """Check every model of `spec` on the device `factory` builds; see the module docstring.

    `baseline` (a stored baseline) and `baseline_model` (measured interleaved) are alternatives;
    a model's own ``baseline_model`` wins over both.
    """
    if baseline is not None and baseline_model is not None:
        raise InputError("give --baseline or --baseline-model, not both")
    if baseline is not None and baseline.device != device_name:
        raise InputError(f"{baseline_origin}: baseline was measured on device '{baseline.device}', "
                         f"this check runs on '{device_name}'")
    started = time.time()
    t0 = time.monotonic()
    results = []
    for model in spec.models:
        stored = baseline.models.get(model.display_name) if baseline is not None else None
        results.append(check_model(spec, model, factory, baseline_model=baseline_model, stored=stored,
                                   stored_origin=baseline_origin, progress=progress))
    return CheckResult(device_name, results, started, time.monotonic() - t0)


def baseline_from(result: CheckResult) -> BaselineFile:
    """The stored baseline a check's candidate rounds make (``--save-baseline``)."""
    entries = {m.name: BaselineEntry(model=str(m.model_path), rounds=tuple(m.candidate_rounds),
                                     size_mb=m.size_mb, accuracy=m.accuracy)
               for m in result.models if len(m.candidate_rounds) >= 2}
    return BaselineFile(device=result.device, created_at=result.started_at, models=entries)


def save_baseline(result: CheckResult, path: Path) -> Path:
    """Write `baseline_from(result)` as JSON to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(baseline_from(result).model_dump_json())
    return path
