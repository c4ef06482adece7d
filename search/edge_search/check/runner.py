"""`run_check`: measure models (and their baselines) and decide every budget of a budgets.yaml file.

How a model is measured. A check runs *rounds*; each round measures the model once and, when the
baseline is a model of this job, the baseline once, each in a fresh worker process (a fresh
device per measurement, so an emulator's cache does not hide host noise either). The order
alternates, A B then B A (ABBA), so neither side always runs first and slow drift (a warming
chassis, a neighbour ramping up) cancels within a pair. After ``min_rounds`` rounds the budgets are
decided (`edge_search.check.decisions.decide_model`); while a latency or memory decision is still a
warning (its interval straddles the limit) more rounds are measured, up to ``max_rounds``.
The rounds are not pooled into one interval: each round is one draw of the per-process effect,
and the interval comes from the spread over rounds (see `edge_search.check.statistics`).

A stored baseline (``--baseline FILE``, written by ``--save-baseline``) holds every round's
`LatencyStats` per model; it is compared unpaired, and a baseline from another CPU or ONNX
Runtime version can warn but never fail.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_search.bundle.resolve import ResolvedModel, resolve_model
from edge_search.check.baseline import BaselineEntry, BaselineFile, comparable_hosts
from edge_search.check.budgets import MEASURED_METRICS, Budget, BudgetsFile, ModelSpec
from edge_search.check.decisions import Decision, decide_model, exit_code
from edge_search.check.models import evaluate_accuracy, model_size_mb
from edge_search.devices.base import Device, MeasureRequest, SessionKnobs
from edge_search.devices.inputs import resolve_shapes, specs_from_onnx
from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError

DeviceFactory = Callable[[], Device]
"""Builds a fresh `Device` for one measurement (closed after it)."""
Progress = Callable[[str], None]


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


def input_shapes(resolved: ResolvedModel, spec: BudgetsFile, model: ModelSpec,
                 shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """The concrete shape of every input of a resolved model: what its bundle records, overridden
    by the file's `shapes`, the model's `shapes` and the command line's `shapes` (``--shape``).

    The file's and the command line's shapes apply to inputs of that name only; a model's own must
    name its inputs. Raises `InputError` naming the model when a dynamic dimension is left open.
    """
    specs = specs_from_onnx(resolved.onnx_path)
    names = {s.name for s in specs}
    given = resolved.shapes_with({k: v for k, v in spec.shapes.items() if k in names}, model.shapes,
                                 {k: v for k, v in (shapes or {}).items() if k in names})
    try:
        return resolve_shapes(specs, given)
    except InputError as err:
        raise InputError(f"model '{model.display_name}' ({resolved.onnx_path}): {err}, or in the budgets file "
                         "(shapes: {NAME: [D0, D1, ...]}; a bundle folder from `edge-search export` "
                         "records them)") from None


def check_model(spec: BudgetsFile, model: ModelSpec, factory: DeviceFactory, *,
                baseline_model: Path | None = None, stored: BaselineEntry | None = None,
                stored_origin: str = "", progress: Progress | None = None,
                shapes: Mapping[str, Sequence[int]] | None = None) -> ModelResult:
    """Measure one model (interleaved with its baseline model, if any) and decide its budgets.

    `shapes` (``--shape``) override the input shapes of every model side (see `input_shapes`).
    """
    t0 = time.monotonic()
    say = progress or (lambda _msg: None)
    name = model.display_name
    budgets = spec.budgets_for(model)
    m = spec.measurement
    cand = resolve_model(model.model)
    session = model.session or cand.session or spec.session

    def request(resolved: ResolvedModel, knobs: SessionKnobs) -> MeasureRequest:
        return MeasureRequest(model_path=resolved.onnx_path, session=knobs,
                              shapes=input_shapes(resolved, spec, model, shapes),
                              precision_target=m.precision_target, max_time_s=m.max_time_s,
                              warmup_min_s=0.1, priority=0)

    base_path = model.baseline_model or baseline_model
    base: ResolvedModel | None = resolve_model(base_path) if base_path is not None else None
    measured = _needs_rounds(budgets)
    cand_req = request(cand, session) if measured else None
    base_req = None
    if base is not None and measured:
        base_req = request(base, model.baseline_session or base.session or session)

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
    while True:
        if cand_req is not None:
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
              baseline_model: Path | None = None, progress: Progress | None = None,
              shapes: Mapping[str, Sequence[int]] | None = None) -> CheckResult:
    """Check every model of `spec` on the device `factory` builds; see the module docstring.

    `baseline` (a stored baseline) and `baseline_model` (measured interleaved) are alternatives;
    a model's own ``baseline_model`` wins over both. `shapes` (``--shape``) apply to every model
    with an input of that name; one that no model has is an `InputError`.
    """
    if baseline is not None and baseline_model is not None:
        raise InputError("give --baseline or --baseline-model, not both")
    if baseline is not None and baseline.device != device_name:
        raise InputError(f"{baseline_origin}: baseline was measured on device '{baseline.device}', "
                         f"this check runs on '{device_name}'")
    if shapes:
        sides = [m.model for m in spec.models] + [m.baseline_model for m in spec.models if m.baseline_model]
        sides += [baseline_model] if baseline_model is not None else []
        inputs = {s.name for path in sides for s in specs_from_onnx(resolve_model(path).onnx_path)}
        unknown = sorted(set(shapes) - inputs)
        if unknown:
            raise InputError(f"--shape {', '.join(unknown)}: no model of the check has such an input "
                             f"(inputs: {', '.join(sorted(inputs)) or 'none'})")
    started = time.time()
    t0 = time.monotonic()
    results = []
    for model in spec.models:
        stored = baseline.models.get(model.display_name) if baseline is not None else None
        results.append(check_model(spec, model, factory, baseline_model=baseline_model, stored=stored,
                                   stored_origin=baseline_origin, progress=progress, shapes=shapes))
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
