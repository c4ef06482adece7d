"""The budgets.yaml schema: which metric of which model may be how large (absolute ``<= 12`` or
relative to a baseline ``+5%``), how a check measures (`MeasurementSpec`) and where accuracy comes
from (`EvaluationSpec`). Parsing names the file, the field and the reason in one line.

Deciding the budgets: `edge_search.check.statistics` (intervals over measurement rounds) and
`edge_search.check.decisions` (pass, warn, fail).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from edge_search.devices.base import SessionKnobs
from edge_search.errors import InputError
from edge_search.metrics import BUDGET_METRICS, MEASURED_BUDGET_METRICS, METRICS
from edge_search.schema import StrictModel, format_validation_error

BUDGETS_SCHEMA_VERSION = 1

BudgetKind = Literal["absolute", "relative"]

# Budget metrics, their units and directions, and the `LatencyStats` field of each latency metric
# are the metrics table's (`edge_search.metrics`); these are views of it for the rules below.
MEASURED_METRICS = MEASURED_BUDGET_METRICS
"""Metrics that come from the measurement rounds (noisy: decided with intervals)."""
LATENCY_FIELDS: dict[str, str] = {n: str(METRICS[n].stats_field) for n in MEASURED_METRICS if METRICS[n].unit == "ms"}
"""Latency metrics -> the `LatencyStats` field holding that statistic."""
RELATIVE_METRICS = frozenset({*MEASURED_METRICS, "size_mb"})
"""Metrics a relative budget (``+5%``) may limit: the measured ones and the file size."""

_ABS = re.compile(r"^\s*(<=|>=)?\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_REL = re.compile(r"^\s*\+\s*(\d+\.?\d*|\.\d+)\s*%\s*$")


# --- budgets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """One limit on one metric: absolute (``<= 12``, ``>= 0.97``) or relative to a baseline (``+5%``)."""

    metric: str
    kind: BudgetKind
    limit: float
    """The absolute limit in the metric's unit, or the allowed relative increase (0.05 for +5 %)."""
    text: str
    """The budget as written in budgets.yaml, normalised (``<= 12``, ``+5%``)."""

    @property
    def label(self) -> str:
        """``latency_ms +5%``: the test-case name in reports."""
        return f"{self.metric} {self.text}"

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit


def parse_budget(metric: str, value: Any) -> list[Budget]:
    """Budgets for `metric` from a budgets.yaml value: a number, ``"<= N"``/``">= N"``, ``"+N%"``, or a list.

    A bare number means ``<=`` (``>=`` for accuracy). Raises `ValueError` with the reason.
    """
    if metric not in BUDGET_METRICS:
        raise ValueError(f"unknown metric '{metric}' (known: {', '.join(BUDGET_METRICS)})")
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list of budgets")
        return [b for v in value for b in parse_budget(metric, v)]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a budget is a number, '<= N', '>= N' or '+N%', not {value!r}")
    higher = METRICS[metric].higher_is_better
    if isinstance(value, str) and (m := _REL.match(value)):
        if metric not in RELATIVE_METRICS:
            raise ValueError(f"a relative budget ('{value}') is not supported for {metric}; "
                             "use an absolute one")
        pct = float(m.group(1))
        return [Budget(metric, "relative", pct / 100.0, f"+{pct:g}%")]
    m = _ABS.match(str(value))
    if m is None:
        raise ValueError(f"cannot read budget {value!r}: expected a number, '<= N', '>= N' or '+N%'")
    op = m.group(1) or (">=" if higher else "<=")
    limit = float(m.group(2))
    if (op == ">=") != higher:
        want = ">=" if higher else "<="
        raise ValueError(f"{metric} is {'higher' if higher else 'smaller'}-is-better: write '{want} N', "
                         f"not '{value}'")
    if not math.isfinite(limit) or limit < 0 or (higher and limit > 1):
        raise ValueError(f"budget {value!r} is out of range")
    return [Budget(metric, "absolute", limit, f"{op} {limit:g}")]


# --- the budgets.yaml schema -------------------------------------------------------------------


BudgetValue = float | str | list[float | str]


def _check_budgets(value: dict[str, BudgetValue]) -> dict[str, BudgetValue]:
    """Validate every metric's budgets (raises `ValueError` naming the metric)."""
    for metric, raw in value.items():
        try:
            parse_budget(metric, raw)
        except ValueError as err:
            raise ValueError(f"{metric}: {err}") from None
    return value


class MeasurementSpec(StrictModel):
    """How a check measures: rounds of fresh worker processes and each worker's stopping rule."""

    min_rounds: int = Field(4, ge=2, le=100)
    """Rounds measured at least (each round: one worker per side, in alternating order)."""
    max_rounds: int = Field(10, ge=2, le=100)
    """Rounds measured at most while a latency decision is still inconclusive (a warning)."""
    max_time_s: float = Field(0.6, gt=0, le=600)
    """Repetition-phase time cap of each worker (warm-up excluded)."""
    precision_target: float = Field(0.01, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Significance level of the Mann-Whitney U test a relative failure also needs."""

    @model_validator(mode="after")
    def _rounds(self) -> MeasurementSpec:
        if self.max_rounds < self.min_rounds:
            raise ValueError("max_rounds must be at least min_rounds")
        return self


class EvaluationSpec(StrictModel):
    """Where accuracy comes from: a built-in task's held-out split, or an .npz file of ``x`` and ``y``."""

    task: str | None = None
    data: Path | None = None
    """An .npz file with the inputs under ``x`` and integer labels under ``y`` (keys: `x_key`, `y_key`)."""
    x_key: str = "x"
    y_key: str = "y"
    batch_size: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> EvaluationSpec:
        if (self.task is None) == (self.data is None):
            raise ValueError("give exactly one of 'task' and 'data'")
        return self


class ModelSpec(StrictModel):
    """One model under budget: an ONNX file or an exported bundle folder, its knobs and budgets."""

    name: str = ""
    """Test-case name in reports (default: the file name without .onnx)."""
    model: Path
    baseline_model: Path | None = None
    """A baseline measured in the same job, interleaved with the model (overrides --baseline-model)."""
    session: SessionKnobs | None = None
    """Session knobs (default: the file's `session`)."""
    baseline_session: SessionKnobs | None = None
    """Knobs of the baseline side (default: the model's), e.g. to guard a thread-count change."""
    shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    """Concrete shapes of inputs with dynamic dimensions (over the file's `shapes` and a bundle's own)."""
    evaluation: EvaluationSpec | None = None
    budgets: dict[str, BudgetValue] = Field(default_factory=dict)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, value: dict[str, BudgetValue]) -> dict[str, BudgetValue]:
        return _check_budgets(value)

    @property
    def display_name(self) -> str:
        return self.name or (self.model.stem if self.model.suffix == ".onnx" else self.model.name)


class BudgetsFile(StrictModel):
    """A budgets.yaml file: the device, default knobs, measurement settings and the models."""

    schema_version: int
    device: str = "host"
    session: SessionKnobs = SessionKnobs()
    shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    """Input shapes for every model that has an input of that name (a model's own `shapes` win)."""
    measurement: MeasurementSpec = MeasurementSpec()
    defaults: dict[str, BudgetValue] = Field(default_factory=dict)
    """Budgets every model gets unless it sets the same metric itself."""
    models: list[ModelSpec] = Field(min_length=1)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, value: int) -> int:
        if value != BUDGETS_SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported (expected {BUDGETS_SCHEMA_VERSION})")
        return value

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, value: dict[str, BudgetValue]) -> dict[str, BudgetValue]:
        return _check_budgets(value)

    @model_validator(mode="after")
    def _names(self) -> BudgetsFile:
        names = [m.display_name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique (repeated: {', '.join(dup)}); set 'name'")
        return self

    def budgets_for(self, model: ModelSpec) -> list[Budget]:
        """The model's budgets: the file's `defaults` overridden per metric by the model's own."""
        merged = {**self.defaults, **model.budgets}
        return [b for metric, raw in merged.items() for b in parse_budget(metric, raw)]

    def session_for(self, model: ModelSpec) -> SessionKnobs:
        return model.session or self.session


def parse_budgets(data: Any, origin: str, base_dir: Path | None = None) -> BudgetsFile:
    """Validate budgets data; relative paths are resolved against `base_dir`; models must exist.

    Raises `InputError` naming the file, the field and the reason.
    """
    if not isinstance(data, dict):
        raise InputError(f"{origin}: a budgets file must be a mapping with schema_version and models")
    if "schema_version" not in data:
        raise InputError(f"{origin}: schema_version: required field is missing (use schema_version: 1)")
    try:
        spec = BudgetsFile.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(origin, err, data, example="examples/ci/budgets.yaml",
                                                 missing="required field is missing",
                                                 named_lists=("models",))) from None
    base = base_dir or Path(".")

    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    models: list[ModelSpec] = []
    for i, m in enumerate(spec.models):
        where = f"{origin}: models[{i}] ({m.display_name})"
        update: dict[str, Any] = {"model": resolve(m.model), "name": m.display_name}
        if not update["model"].exists():
            raise InputError(f"{where}.model: {update['model']}: no such model file or bundle")
        if m.baseline_model is not None:
            update["baseline_model"] = resolve(m.baseline_model)
            if not update["baseline_model"].exists():
                raise InputError(f"{where}.baseline_model: {update['baseline_model']}: no such model file")
        if m.evaluation is not None and m.evaluation.data is not None:
            data_path = resolve(m.evaluation.data)
            if not data_path.is_file():
                raise InputError(f"{where}.evaluation.data: {data_path}: no such file")
            update["evaluation"] = m.evaluation.model_copy(update={"data": data_path})
        if any(b.metric == "accuracy" for b in spec.budgets_for(m)) and m.evaluation is None:
            raise InputError(f"{where}.budgets.accuracy: an accuracy budget needs 'evaluation' "
                             "(task: NAME or data: FILE.npz)")
        models.append(m.model_copy(update=update))
    return spec.model_copy(update={"models": models})


def load_budgets(path: Path) -> BudgetsFile:
    """Read and validate a budgets.yaml file (`parse_budgets`); errors are one-line `InputError`s."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such budgets file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {' '.join(str(err).split())[:200]}") from None
    return parse_budgets(data, str(path), path.parent)
