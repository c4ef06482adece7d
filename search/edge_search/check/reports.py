"""Reports of an `edge-search check`: JUnit XML, a markdown job summary, benchmark JSON, plain text.

- `junit_xml`: one ``<testcase>`` per model and budget (``classname`` = the model, ``name`` = the
  budget); a failed budget is a ``<failure>``, a skipped one ``<skipped>``, a warning passes with
  its message in ``<system-out>`` (JUnit has no warning state).
- `markdown_summary`: a table for ``$GITHUB_STEP_SUMMARY``.
- `benchmark_json`: github-action-benchmark's ``customSmallerIsBetter`` list
  (``name``/``unit``/``value``/``range``/``extra``), for trend charts; accuracy enters as its
  error rate (1 - accuracy) so that every entry is smaller-is-better.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from typing import Any

from edge_search.check.decisions import Decision
from edge_search.check.runner import CheckResult, ModelResult
from edge_search.check.statistics import absolute_interval
from edge_search.metrics import MEASURED_BUDGET_METRICS, METRICS

TREND_METRICS = ("latency_ms", "latency_p90_ms", "peak_memory_mb")
"""Measured metrics every model gets a benchmark-JSON entry for (trend charts), budget or not."""
_ICON = {"pass": "✅ pass", "warn": "⚠️ warn", "fail": "❌ fail", "skip": "⏭️ skip"}


def _num(x: float, unit: str) -> str:
    if math.isnan(x):
        return "-"
    if unit == "x":
        return f"{x:.3f}x"
    return f"{x:.4g} {unit}".rstrip()


def _value_text(d: Decision) -> str:
    if d.status == "skip":
        return "-"
    if d.unit == "x":
        return f"{d.value - 1:+.1%}"
    return _num(d.value, d.unit)


def _ci_text(d: Decision) -> str:
    if d.status == "skip" or d.low == d.high:
        return "-"
    if d.unit == "x":
        return f"[{d.low - 1:+.1%}, {d.high - 1:+.1%}]"
    return f"[{_num(d.low, d.unit)}, {_num(d.high, d.unit)}]"


def _headline(result: CheckResult) -> str:
    counts = {s: sum(d.status == s for d in result.decisions) for s in ("pass", "warn", "fail", "skip")}
    parts = [f"{counts['fail']} failed", f"{counts['warn']} warned", f"{counts['pass']} passed"]
    if counts["skip"]:
        parts.append(f"{counts['skip']} skipped")
    verdict = "budget exceeded" if result.exit_code else "all within budget"
    return f"{verdict} ({', '.join(parts)})"


def _latency_label(result: CheckResult) -> str:
    if result.emulated:
        return "latency is **emulated** (predicted from host profiles, not measured on the device)"
    return "latency measured on this runner"


# --- JUnit -------------------------------------------------------------------------------------


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one test suite, one test case per model and budget."""
    decisions = result.decisions
    suites = ET.Element("testsuites", name="edge-search check")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"edge-search check ({result.device})",
        "tests": str(len(decisions)),
        "failures": str(sum(d.status == "fail" for d in decisions)),
        "errors": "0",
        "skipped": str(sum(d.status == "skip" for d in decisions)),
        "time": f"{result.elapsed_s:.3f}",
    })
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="device", value=result.device)
    ET.SubElement(props, "property", name="latency_source",
                  value="emulated" if result.emulated else "measured")
    for m in result.models:
        per_case = m.elapsed_s / max(len(m.decisions), 1)
        for d in m.decisions:
            case = ET.SubElement(suite, "testcase", classname=m.name, name=d.budget.label,
                                 time=f"{per_case:.3f}")
            detail = _detail(m, d)
            if d.status == "fail":
                failure = ET.SubElement(case, "failure", message=d.message, type="BudgetExceeded")
                failure.text = detail
            elif d.status == "skip":
                ET.SubElement(case, "skipped", message=d.message)
            else:
                out = ET.SubElement(case, "system-out")
                out.text = ("WARNING: " if d.status == "warn" else "") + detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _detail(m: ModelResult, d: Decision) -> str:
    lines = [d.message, f"source: {d.source}"]
    if d.budget.metric in MEASURED_BUDGET_METRICS:
        base = f", baseline: {m.baseline}" if m.baseline else ""
        lines.append(f"rounds: {len(m.candidate_rounds)}{base}")
    lines += [*d.notes, *m.notes]
    return "\n".join(lines)


# --- markdown ----------------------------------------------------------------------------------


def markdown_summary(result: CheckResult) -> str:
    """A markdown section for a CI job summary: headline, one table row per model and budget, notes."""
    icon = "❌" if result.exit_code else "✅"
    lines = [f"### {icon} edge-search check: {_headline(result)}", "",
             f"Device `{result.device}`: {_latency_label(result)}. {result.elapsed_s:.0f} s in all.", "",
             "| model | budget | value | 95% CI | result | detail |",
             "|---|---|---|---|---|---|"]
    for m in result.models:
        for d in m.decisions:
            budget = d.budget.label + (" (emulated)" if d.source == "emulated" and d.unit != "MB" else "")
            lines.append(f"| {m.name} | `{budget}` | {_value_text(d)} | {_ci_text(d)} | {_ICON[d.status]} "
                         f"| {d.message.replace('|', '/')} |")
    notes = [f"- **{m.name}**: {n}" for m in result.models for n in m.notes]
    for m in result.models:
        base = f" with baseline `{m.baseline}`" if m.baseline else ""
        notes.append(f"- **{m.name}**: {len(m.candidate_rounds)} round(s){base}, {m.elapsed_s:.0f} s")
    lines += ["", *notes, "",
              "_A budget fails only when the whole confidence interval is beyond it (relative budgets: "
              "and a Mann-Whitney U test agrees); a warning means this runner's noise cannot tell._", ""]
    return "\n".join(lines)


# --- github-action-benchmark -------------------------------------------------------------------


def benchmark_json(result: CheckResult) -> str:
    """github-action-benchmark ``customSmallerIsBetter`` JSON: latency, memory, size, error rate."""
    entries: list[dict[str, Any]] = []
    for m in result.models:
        by_metric = {d.budget.metric: d for d in m.decisions if d.budget.kind == "absolute"}
        extra = f"device={result.device}; source={m.source}; rounds={len(m.candidate_rounds)}"
        if m.candidate_rounds:
            for metric in TREND_METRICS:
                unit = METRICS[metric].unit
                d = by_metric.get(metric)
                if d is not None:
                    value, low, high = d.value, d.low, d.high
                else:
                    iv = absolute_interval(m.candidate_rounds, metric)
                    value, low, high = iv.value, iv.low, iv.high
                entries.append({"name": f"{m.name} {metric}", "unit": unit, "value": round(value, 6),
                                "range": f"±{(high - low) / 2:.4g}", "extra": extra})
        if m.size_mb is not None:
            entries.append({"name": f"{m.name} size_mb", "unit": METRICS["size_mb"].unit, "value": round(m.size_mb, 6),
                            "extra": extra})
        if m.accuracy is not None:
            entries.append({"name": f"{m.name} error_rate", "unit": "fraction",
                            "value": round(1.0 - m.accuracy, 6), "extra": extra + "; 1 - accuracy"})
    return json.dumps(entries, indent=2) + "\n"


# --- plain text --------------------------------------------------------------------------------


def text_report(result: CheckResult) -> str:
    """Plain lines for the console: one per model and budget, then the headline."""
    lines = []
    for m in result.models:
        for d in m.decisions:
            lines.append(f"{d.status.upper():<4}  {m.name}: {d.budget.label}: {d.message}")
        lines += [f"      {m.name}: {n}" for n in m.notes]
    src = "emulated" if result.emulated else "measured"
    lines.append(f"edge-search check on '{result.device}' (latency {src}): {_headline(result)}, "
                 f"{result.elapsed_s:.0f} s")
    return "\n".join(lines)
