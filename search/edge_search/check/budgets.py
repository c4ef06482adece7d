"""Budgets for `edge-search check`: the budgets.yaml schema and the pass/warn/fail decisions.

The decisions are pure functions over `LatencyStats` (and plain numbers), so every rule can be
unit-tested on recorded measurements without measuring anything.

How noise is respected. A check measures each model in several *rounds*, each a fresh worker
process (`edge_search.check.runner`). Samples within one process are not independent of each other:
the process's memory layout, the cores it landed on, a neighbour that ran during it all shift
every sample of that process together. Bootstrapping the pooled raw samples would treat them as
independent and give an interval of the median ratio far too narrow (about ±0.03 % for two copies
of one model on the 2-core CI VM, where the per-process ratio actually spreads about ±1 %), so two
identical models would "differ" with p < 1e-20. The interval here is instead taken over rounds:

- relative budgets: per round, the ratio of the candidate's and the baseline's statistic (measured
  back to back, in alternating order), and a Student-t interval of the mean log ratio over the
  rounds (`paired_ratio_interval`); slow drift cancels within a pair, per-process effects widen
  the interval as they should. A stored baseline (another job) is compared unpaired (Welch).
  The budget *fails* only when that interval lies wholly above ``1 + allowed`` **and** a one-sided
  Mann-Whitney U test (the engine's `compare`, over the pooled samples) says the candidate is
  slower; it *passes* when the interval lies wholly at or below the limit, and *warns* otherwise.
- absolute latency budgets: a Student-t interval (log scale) of the per-round statistic, widened
  to contain the typical within-round interval (the CI of the median or quantile, or an emulator's
  prediction interval); *fail* when it lies wholly above the limit, *warn* when it straddles it.
- size and accuracy are deterministic (file bytes, a fixed evaluation split): plain comparisons.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from scipy import stats as sps

from edge_search.devices.base import SessionKnobs
from edge_search.devices.stats import Comparison, LatencyStats, compare
from edge_search.errors import InputError
from edge_search.metrics import BUDGET_METRICS, MEASURED_BUDGET_METRICS, METRICS
from edge_search.schema import StrictModel, format_validation_error

BUDGETS_SCHEMA_VERSION = 1

Status = Literal["pass", "warn", "fail", "skip"]
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


# --- intervals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval."""

    value: float
    low: float
    high: float


def log_t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Geometric mean of positive `values` with a Student-t interval on the log scale.

    One value gives a zero-width interval (the caller widens it with within-round information).
    """
    x = np.log(np.asarray(values, dtype=float))
    if x.size == 0:
        raise ValueError("no values")
    centre = float(x.mean())
    if x.size < 2:
        v = math.exp(centre)
        return Interval(v, v, v)
    half = float(sps.t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(math.exp(centre), math.exp(centre - half), math.exp(centre + half))


def paired_ratio_interval(baseline: Sequence[float], candidate: Sequence[float],
                          confidence: float = 0.95) -> Interval:
    """Ratio candidate/baseline from paired rounds: t interval of the mean per-round log ratio."""
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError("paired rounds need the same, non-zero number of values on both sides")
    return log_t_interval([c / b for b, c in zip(baseline, candidate, strict=True)], confidence)


def unpaired_ratio_interval(baseline: Sequence[float], candidate: Sequence[float],
                            confidence: float = 0.95) -> Interval:
    """Ratio of geometric means from unpaired rounds (a stored baseline): Welch t interval on logs."""
    a = np.log(np.asarray(baseline, dtype=float))
    b = np.log(np.asarray(candidate, dtype=float))
    if a.size < 2 or b.size < 2:
        raise ValueError("an unpaired comparison needs at least two rounds on each side")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(b.mean() - a.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(math.exp(diff), math.exp(diff), math.exp(diff))
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, df) * se)
    return Interval(math.exp(diff), math.exp(diff - half), math.exp(diff + half))


def quantile_ci(samples: Sequence[float], q: float, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the `q` quantile from binomial order statistics (the sample range if few)."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n == 0:
        raise ValueError("no samples")
    alpha = 1.0 - confidence
    lo = max(int(sps.binom.ppf(alpha / 2.0, n, q)) - 1, 0)
    hi = min(int(sps.binom.isf(alpha / 2.0, n, q)), n - 1)
    return float(x[lo]), float(x[hi])


def metric_value(stats: LatencyStats, metric: str) -> float:
    """The statistic `metric` names (a latency metric or ``peak_memory_mb``) of one measurement."""
    if metric == "peak_memory_mb":
        return stats.peak_memory_mb
    if metric not in LATENCY_FIELDS:
        raise ValueError(f"{metric} is not a measured metric")
    return float(getattr(stats, LATENCY_FIELDS[metric]))


def within_round_ci(stats: LatencyStats, metric: str, confidence: float = 0.95) -> tuple[float, float]:
    """The interval one measurement gives for `metric` on its own.

    Emulated: the prediction interval (tails are not predicted, so it stands for every latency
    metric). Measured: the CI of the median, of the quantile, or a normal CI of the mean; peak
    memory has none (a point).
    """
    if metric == "peak_memory_mb":
        return stats.peak_memory_mb, stats.peak_memory_mb
    value = metric_value(stats, metric)
    if stats.source == "emulated" or len(stats.samples_ms) < 2:
        return min(stats.ci_low_ms, value), max(stats.ci_high_ms, value)
    q = METRICS[metric].quantile
    if q == 0.5:
        return stats.ci_low_ms, stats.ci_high_ms
    if q is None:
        half = float(sps.norm.ppf(0.5 + confidence / 2.0)) * stats.stdev_ms / math.sqrt(len(stats.samples_ms))
        return stats.mean_ms - half, stats.mean_ms + half
    return quantile_ci(stats.samples_ms, q, confidence)


def absolute_interval(rounds: Sequence[LatencyStats], metric: str, confidence: float = 0.95) -> Interval:
    """Interval of `metric` over measurement rounds: the t interval over rounds (log scale), widened
    to hold the median round's own interval (which dominates for one round or an emulated device)."""
    if not rounds:
        raise ValueError("no rounds")
    values = [metric_value(s, metric) for s in rounds]
    if metric == "peak_memory_mb" and min(values) <= 0:
        return Interval(float(np.median(values)), min(values), max(values))
    iv = log_t_interval(values, confidence)
    cis = [within_round_ci(s, metric, confidence) for s in rounds]
    lo = float(np.median([c[0] for c in cis]))
    hi = float(np.median([c[1] for c in cis]))
    return Interval(iv.value, min(iv.low, lo), max(iv.high, hi))


def pooled(rounds: Sequence[LatencyStats]) -> LatencyStats:
    """One `LatencyStats` of all rounds' raw samples (for the U test; its own CI is not used)."""
    samples = [x for s in rounds for x in s.samples_ms]
    first = rounds[0]
    if len(samples) < 2:
        return first
    return LatencyStats.from_samples(samples, device=first.device, confidence=first.confidence,
                                     source=first.source, host=first.host)


def u_test_slower(baseline: Sequence[LatencyStats], candidate: Sequence[LatencyStats], metric: str,
                  confidence: float = 0.95) -> tuple[float, float]:
    """(two-sided, one-sided 'candidate slower') Mann-Whitney U p-values.

    Over the pooled raw samples (the engine's `compare`) for latency metrics with samples on both
    sides; otherwise over the per-round values (emulated predictions, peak memory).
    """
    has_samples = all(len(s.samples_ms) >= 2 for s in (*baseline, *candidate))
    if metric in LATENCY_FIELDS and has_samples:
        c = compare(pooled(baseline), pooled(candidate), confidence=confidence, n_resamples=200)
        return c.p_value, c.p_value_slower
    a = [metric_value(s, metric) for s in baseline]
    b = [metric_value(s, metric) for s in candidate]
    if len(set(a) | set(b)) < 2:
        return 1.0, 1.0
    two = sps.mannwhitneyu(b, a, alternative="two-sided")
    greater = sps.mannwhitneyu(b, a, alternative="greater")
    return float(two.pvalue), float(greater.pvalue)


# --- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The outcome of one budget for one model, with the numbers behind it."""

    model: str
    budget: Budget
    status: Status
    value: float
    """The measured value (absolute budgets) or the candidate/baseline ratio (relative budgets)."""
    low: float
    high: float
    """Confidence interval of `value` (equal to it for deterministic metrics)."""
    limit: float
    """The threshold `value` is held to: the absolute limit, or 1 + allowed increase."""
    unit: str
    message: str
    p_value: float | None = None
    """One-sided Mann-Whitney U p-value ('candidate slower') of a relative latency budget."""
    source: str = "measured"
    """``measured`` or ``emulated``: where the latency came from."""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def conclusive(self) -> bool:
        """False while more rounds could still move a warning to pass or fail."""
        return self.status != "warn"


def _fmt(x: float, unit: str) -> str:
    return f"{x:.4g} {unit}".rstrip()


def decide_absolute(model: str, budget: Budget, rounds: Sequence[LatencyStats],
                    confidence: float = 0.95) -> Decision:
    """An absolute budget on a measured metric: fail when the interval lies wholly beyond the limit,
    pass when it lies wholly within, warn when it straddles the limit."""
    iv = absolute_interval(rounds, budget.metric, confidence)
    unit = budget.unit
    source = rounds[0].source
    limit = budget.limit
    ci = f"{confidence:.0%} CI [{_fmt(iv.low, unit)}, {_fmt(iv.high, unit)}]"
    if iv.low > limit:
        status: Status = "fail"
        msg = f"{budget.metric} {_fmt(iv.value, unit)} exceeds {budget.text}: the whole {ci} is above"
    elif iv.high <= limit:
        status = "pass"
        msg = f"{budget.metric} {_fmt(iv.value, unit)} within {budget.text} ({ci})"
    else:
        status = "warn"
        msg = (f"{budget.metric} {_fmt(iv.value, unit)}: the {ci} straddles the limit {_fmt(limit, unit)}; "
               "too close to call on this runner")
    notes = ("latency is emulated (predicted, not measured)",) if source == "emulated" and \
        budget.metric in LATENCY_FIELDS else ()
    return Decision(model, budget, status, iv.value, iv.low, iv.high, limit, unit, msg, None, source, notes)


def decide_relative(model: str, budget: Budget, baseline: Sequence[LatencyStats],
                    candidate: Sequence[LatencyStats], *, paired: bool = True, confidence: float = 0.95,
                    alpha: float = 0.05, comparable: bool = True) -> Decision:
    """A relative budget on a measured metric, candidate vs baseline rounds.

    `paired`: rounds were measured interleaved in this job (round i of each side back to back);
    otherwise (a stored baseline) they are compared unpaired. Fail needs the ratio's interval wholly
    above ``1 + allowed`` and the one-sided U test below `alpha` (`Comparison.slower_than`); pass
    needs the interval wholly at or below the limit; anything else warns. `comparable` False (the
    baseline came from another machine or runtime) turns a failure into a warning.
    """
    metric = budget.metric
    base_v = [metric_value(s, metric) for s in baseline]
    cand_v = [metric_value(s, metric) for s in candidate]
    if paired:
        n = min(len(base_v), len(cand_v))
        iv = paired_ratio_interval(base_v[:n], cand_v[:n], confidence)
    else:
        iv = unpaired_ratio_interval(base_v, cand_v, confidence)
    p_two, p_slower = u_test_slower(baseline, candidate, metric, confidence)
    comparison = Comparison(iv.value, iv.low, iv.high, p_two, p_slower, confidence)
    limit = 1.0 + budget.limit
    source = candidate[0].source
    ci = f"{confidence:.0%} CI [{iv.low:.3f}, {iv.high:.3f}]"
    change = f"{iv.value - 1:+.1%} vs baseline ({ci} of the ratio, U test p={p_slower:.2g})"
    notes: list[str] = []
    if comparison.slower_than(budget.limit, alpha):
        status: Status = "fail"
        msg = f"{metric} {change}: slower than the allowed {budget.text}"
        if not comparable:
            status = "warn"
            notes.append("baseline measured on another machine or runtime: a slowdown there does not fail")
    elif iv.high <= limit:
        status = "pass"
        msg = f"{metric} {change}: within {budget.text}"
    else:
        status = "warn"
        msg = f"{metric} {change}: cannot tell whether it is within {budget.text} on this runner"
    if source == "emulated":
        notes.append("latency is emulated: the ratio assumes the calibration error is common to both models")
    return Decision(model, budget, status, iv.value, iv.low, iv.high, limit, "x", msg, p_slower, source,
                    tuple(notes))


def decide_exact(model: str, budget: Budget, value: float, baseline_value: float | None = None) -> Decision:
    """A budget on a deterministic figure (size, accuracy on a fixed split): a plain comparison.

    Relative budgets need `baseline_value`; without one the budget is skipped.
    """
    unit = budget.unit
    if budget.kind == "relative":
        if baseline_value is None or baseline_value <= 0:
            return skipped(model, budget, "no baseline to compare with")
        ratio = value / baseline_value
        limit = 1.0 + budget.limit
        ok = ratio <= limit
        msg = (f"{budget.metric} {_fmt(value, unit)} is {ratio - 1:+.1%} vs baseline "
               f"({_fmt(baseline_value, unit)}): {'within' if ok else 'exceeds'} {budget.text}")
        return Decision(model, budget, "pass" if ok else "fail", ratio, ratio, ratio, limit, "x", msg)
    ok = value >= budget.limit if budget.higher_is_better else value <= budget.limit
    msg = f"{budget.metric} {_fmt(value, unit)} {'within' if ok else 'violates'} {budget.text}"
    return Decision(model, budget, "pass" if ok else "fail", value, value, value, budget.limit, unit, msg)


def skipped(model: str, budget: Budget, reason: str) -> Decision:
    """A budget that could not be decided (e.g. a relative budget without a baseline)."""
    return Decision(model, budget, "skip", math.nan, math.nan, math.nan, math.nan,
                    budget.unit, f"{budget.label}: skipped: {reason}")


def decide_model(model: str, budgets: Sequence[Budget], candidate: Sequence[LatencyStats],
                 baseline: Sequence[LatencyStats] | None = None, *, paired: bool = True,
                 size_mb: float | None = None, baseline_size_mb: float | None = None,
                 accuracy: float | None = None, confidence: float = 0.95, alpha: float = 0.05,
                 comparable: bool = True) -> list[Decision]:
    """Every budget of one model, in order (see `decide_absolute`, `decide_relative`, `decide_exact`)."""
    out: list[Decision] = []
    for b in budgets:
        if b.metric in MEASURED_METRICS:
            if b.kind == "absolute":
                out.append(decide_absolute(model, b, candidate, confidence))
            elif not baseline:
                out.append(skipped(model, b, "no baseline (--baseline, --baseline-model or baseline_model)"))
            else:
                out.append(decide_relative(model, b, baseline, candidate, paired=paired,
                                           confidence=confidence, alpha=alpha, comparable=comparable))
        elif b.metric == "size_mb":
            if size_mb is None:
                out.append(skipped(model, b, "size unknown"))
            else:
                out.append(decide_exact(model, b, size_mb, baseline_size_mb))
        elif b.metric == "accuracy":
            if accuracy is None:
                out.append(skipped(model, b, "no evaluation"))
            else:
                out.append(decide_exact(model, b, accuracy))
    return out


def exit_code(decisions: Sequence[Decision]) -> int:
    """1 when any budget failed, else 0 (warnings and skips do not fail a check)."""
    return 1 if any(d.status == "fail" for d in decisions) else 0
