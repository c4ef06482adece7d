"""Pass/warn/fail decisions of budgets: pure functions over `LatencyStats` rounds (and plain numbers),
so every rule can be unit-tested on recorded measurements without measuring anything. How the
intervals behind them respect noise: `edge_search.check.statistics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_search.check.budgets import LATENCY_FIELDS, MEASURED_METRICS, Budget
from edge_search.check.statistics import (
    Comparison,
    absolute_interval,
    metric_value,
    paired_ratio_interval,
    smallest_u_p,
    u_test_slower,
    unpaired_ratio_interval,
)
from edge_search.devices.stats import LatencyStats

Status = Literal["pass", "warn", "fail", "skip"]

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
    needs the interval wholly at or below the limit; anything else warns. The U test runs over the
    per-round values (rounds, not samples, are independent); when too few rounds are there for it
    to reach `alpha` at all, a note says so. `comparable` False (the baseline came from another
    machine or runtime) turns a failure into a warning.
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
    if status == "warn" and iv.low > limit and smallest_u_p(len(base_v), len(cand_v)) >= alpha:
        notes.append(f"{len(base_v)} and {len(cand_v)} rounds cannot make the U test reach p < {alpha:g} "
                     "(it compares rounds); more rounds (max_rounds) are needed for this to fail")
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
