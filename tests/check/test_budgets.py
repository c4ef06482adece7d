"""Budgets: the budgets.yaml schema and the decision rules, on recorded measurements (nothing measured)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_search.check.budgets import Budget, load_budgets, parse_budget
from edge_search.check.decisions import decide_absolute, decide_exact, decide_model, decide_relative, exit_code
from edge_search.check.statistics import compare, log_t_interval, paired_ratio_interval, pooled, unpaired_ratio_interval
from edge_search.devices.stats import HostInfo, LatencyStats, quantile_ci
from edge_search.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data" / "check_rounds.json"


def _rounds(key: str) -> list[LatencyStats]:
    """Recorded rounds as `LatencyStats` (samples: the recorded round's 101 percentiles)."""
    data = json.loads(DATA.read_text())
    host = HostInfo(**data["host"])
    return [LatencyStats.from_samples(r["percentiles_ms"], device="host", peak_memory_mb=r["peak_memory_mb"],
                                      host=host).model_copy(update={"median_ms": r["median_ms"]})
            for r in data[key]]


REF = _rounds("reference")
SLOW = _rounds("slower_20pct")


def rel(pct: float, metric: str = "latency_ms") -> Budget:
    return parse_budget(metric, f"+{pct}%")[0]


# --- parsing -----------------------------------------------------------------------------------


def test_parse_budget_forms() -> None:
    assert parse_budget("latency_p90_ms", 12) == [Budget("latency_p90_ms", "absolute", 12.0, "<= 12")]
    assert parse_budget("latency_ms", "<= 3.5")[0].limit == 3.5
    assert parse_budget("accuracy", 0.97) == [Budget("accuracy", "absolute", 0.97, ">= 0.97")]
    assert parse_budget("accuracy", ">= 0.9")[0].text == ">= 0.9"
    assert parse_budget("latency_ms", "+5%") == [Budget("latency_ms", "relative", 0.05, "+5%")]
    both = parse_budget("latency_ms", ["<= 10", "+5%"])
    assert [b.kind for b in both] == ["absolute", "relative"]
    assert parse_budget("size_mb", "+0%")[0].limit == 0.0


@pytest.mark.parametrize(("metric", "value", "match"), [
    ("latency_ms", ">= 3", "smaller-is-better"),
    ("accuracy", "<= 0.9", "higher-is-better"),
    ("accuracy", "+1%", "not supported for accuracy"),
    ("speed", 3, "unknown metric"),
    ("latency_ms", "+5", "cannot read"),
    ("latency_ms", "fast", "cannot read"),
    ("latency_ms", True, "a budget is a number"),
    ("accuracy", 1.5, "out of range"),
    ("latency_ms", [], "empty"),
])
def test_parse_budget_errors(metric: str, value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_budget(metric, value)


GOOD = """\
schema_version: 1
device: host
session: {intra_op_threads: 1}
defaults:
  latency_ms: "+5%"
models:
  - model: m.onnx
    budgets:
      latency_p90_ms: 12
      size_mb: 5
  - name: other
    model: m.onnx
    session: {intra_op_threads: 2}
    budgets:
      latency_ms: "+10%"
"""


def _write(tmp_path: Path, text: str, model: bool = True) -> Path:
    if model:
        (tmp_path / "m.onnx").write_bytes(b"not checked here")
    p = tmp_path / "budgets.yaml"
    p.write_text(text)
    return p


def test_load_budgets_resolves_paths_and_merges_defaults(tmp_path: Path) -> None:
    spec = load_budgets(_write(tmp_path, GOOD))
    first, other = spec.models
    assert first.model == tmp_path / "m.onnx" and first.display_name == "m"
    labels = [b.label for b in spec.budgets_for(first)]
    assert labels == ["latency_ms +5%", "latency_p90_ms <= 12", "size_mb <= 5"]
    assert [b.label for b in spec.budgets_for(other)] == ["latency_ms +10%"]
    assert spec.session_for(other).intra_op_threads == 2
    assert spec.measurement.min_rounds == 4


@pytest.mark.parametrize(("text", "expected"), [
    ("schema_version: 1\nmodels: [\n", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("models: []\n", "schema_version: required field is missing"),
    ("schema_version: 2\nmodels: [{model: m.onnx}]\n", "schema_version: schema_version 2 is not supported"),
    ("schema_version: 1\nmodels: []\n", "models: List should have at least 1 item"),
    ("schema_version: 1\nmodels: [{model: m.onnx, budgets: {latency_ms: fast}}]\n",
     "models[0] (m.onnx).budgets: latency_ms: cannot read budget 'fast'"),
    ("schema_version: 1\nmodels: [{name: x, model: m.onnx, budget: {}}]\n",
     "models[0] (x).budget: unknown field"),
    ("schema_version: 1\nmodels: [{model: missing.onnx}]\n",
     "models[0] (missing).model:"),
    ("schema_version: 1\nmodels: [{model: m.onnx, budgets: {accuracy: 0.9}}]\n",
     "budgets.accuracy: an accuracy budget needs 'evaluation'"),
    ("schema_version: 1\nmodels: [{model: m.onnx}, {model: m.onnx}]\n", "model names must be unique"),
    ("schema_version: 1\nmeasurement: {min_rounds: 5, max_rounds: 3}\nmodels: [{model: m.onnx}]\n",
     "max_rounds must be at least min_rounds"),
    ("schema_version: 1\nsession: {intra_op_threads: 0}\nmodels: [{model: m.onnx}]\n",
     "session.intra_op_threads"),
])
def test_load_budgets_errors_name_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_budgets(path)
    msg = str(info.value)
    assert expected in msg
    assert msg.startswith(str(path)) and "\n" not in msg


def test_missing_budgets_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such budgets file"):
        load_budgets(tmp_path / "nope.yaml")


# --- intervals ---------------------------------------------------------------------------------


def test_intervals() -> None:
    iv = log_t_interval([1.0, 1.0, 1.0])
    assert iv.value == iv.low == iv.high == pytest.approx(1.0)
    iv = paired_ratio_interval([1.0, 2.0, 4.0], [1.1, 2.2, 4.4])
    assert iv.value == pytest.approx(1.1) and iv.low == pytest.approx(1.1)
    iv = unpaired_ratio_interval([1.0, 1.02, 0.98], [1.5, 1.53, 1.47])
    assert iv.low < 1.5 < iv.high
    lo, hi = quantile_ci(list(range(1000)), 0.9)
    assert lo < 900 < hi


def test_round_interval_is_wider_than_pooled_bootstrap() -> None:
    """Why rounds, not pooled samples: the pooled bootstrap pretends a precision rounds do not have."""
    a, b = REF[:5], REF[5:]
    rounds = paired_ratio_interval([s.median_ms for s in a], [s.median_ms for s in b])
    naive = compare(pooled(a), pooled(b))
    assert (rounds.high - rounds.low) > 3 * (naive.ci_high - naive.ci_low)


# --- relative budgets --------------------------------------------------------------------------


def test_identical_model_passes_relative_budget_in_20_recorded_splits() -> None:
    """20 ways of splitting ten recorded rounds of one model into 'baseline' and 'candidate'.

    The rounds include one disturbed round (+15 %) and the halves are not measured back to back,
    so many splits are too close to call (a warning): what matters is that none fails.
    """
    splits = list(itertools.combinations(range(len(REF)), len(REF) // 2))[:: 12][:20]
    assert len(splits) == 20
    statuses = []
    for chosen in splits:
        base = [REF[i] for i in chosen]
        cand = [REF[i] for i in range(len(REF)) if i not in chosen]
        statuses.append(decide_relative("m", rel(5), base, cand).status)
    assert statuses.count("fail") == 0
    assert statuses.count("pass") >= 1


def test_slower_model_fails_relative_budget() -> None:
    d = decide_relative("m", rel(5), REF[:4], SLOW)
    assert d.status == "fail"
    assert 1.1 < d.value < 1.35 and d.low > 1.05
    assert d.p_value is not None and d.p_value < 0.05
    assert "slower than the allowed +5%" in d.message


def test_relative_within_generous_budget_passes() -> None:
    assert decide_relative("m", rel(50), REF[:4], SLOW).status == "pass"


def test_relative_straddle_warns() -> None:
    d = decide_relative("m", rel(20), REF[:4], SLOW)
    assert d.low < 1.2 < d.high
    assert d.status == "warn"


def _flat(values: list[float], source: str = "emulated") -> list[LatencyStats]:
    return [LatencyStats(device="d", source=source, median_ms=v, p90_ms=v, p95_ms=v, p99_ms=v, mean_ms=v,
                         stdev_ms=0, cv=0, ci_low_ms=v * 0.7, ci_high_ms=v * 1.3) for v in values]


def test_relative_fail_needs_the_u_test_to_agree() -> None:
    """Interval wholly above the limit, but two rounds a side cannot make a U test significant."""
    d = decide_relative("m", rel(5), _flat([1.0, 1.1]), _flat([1.2, 1.32]))
    assert d.low > 1.05
    assert d.status == "warn"
    d = decide_relative("m", rel(5), _flat([1.0, 1.1, 1.0, 1.05]), _flat([1.2, 1.32, 1.2, 1.26]))
    assert d.status == "fail"
    assert any("emulated" in n for n in d.notes)


def _tight_rounds(medians: list[float]) -> list[LatencyStats]:
    """Rounds of 200 samples each, tightly around each round's median (a stable process)."""
    return [LatencyStats.from_samples(list(np.linspace(0.999, 1.001, 200) * m), device="host") for m in medians]


def test_relative_u_test_counts_rounds_not_samples() -> None:
    """Every candidate round is 6 % slower than its baseline round, but the rounds overlap: one
    process of each side lands as high as most of the other's. Rounds are the unit, so this is
    too close to call; over the 800 pooled samples a U test would call it certain."""
    base, cand = _tight_rounds([1.0, 1.12, 1.0, 1.12]), _tight_rounds([1.06, 1.18, 1.06, 1.18])
    d = decide_relative("m", rel(5), base, cand)
    assert d.low > 1.05  # the paired interval alone would fail it
    assert d.p_value is not None and d.p_value > 0.05 and d.status == "warn"
    assert compare(pooled(base), pooled(cand)).p_value_slower < 1e-9  # what pooling would have claimed
    two = _tight_rounds([1.0, 1.01])  # two rounds a side can never reach p < 0.05: said in a note
    d = decide_relative("m", rel(5), two, _tight_rounds([1.2, 1.21]))
    assert d.status == "warn" and any("cannot make the U test reach" in n for n in d.notes)


def test_stored_baseline_from_another_machine_warns_instead_of_failing() -> None:
    d = decide_relative("m", rel(5), REF[:4], SLOW, paired=False, comparable=False)
    assert d.status == "warn" and d.notes
    assert decide_relative("m", rel(5), REF[:4], SLOW, paired=False).status == "fail"


# --- absolute budgets --------------------------------------------------------------------------


def test_absolute_budget_straddled_by_noise_warns() -> None:
    median = sorted(s.median_ms for s in REF)[len(REF) // 2]
    d = decide_absolute("m", parse_budget("latency_ms", median)[0], REF[:4])
    assert d.low <= median < d.high
    assert d.status == "warn" and "straddles" in d.message


def test_absolute_budget_fails_only_when_the_interval_is_above() -> None:
    assert decide_absolute("m", parse_budget("latency_ms", 0.2)[0], REF[:4]).status == "fail"
    assert decide_absolute("m", parse_budget("latency_ms", 1.0)[0], REF[:4]).status == "pass"
    p90 = decide_absolute("m", parse_budget("latency_p90_ms", 50)[0], REF[:4])
    assert p90.status == "pass" and p90.value > REF[0].median_ms
    mem = decide_absolute("m", parse_budget("peak_memory_mb", 300)[0], REF[:4])
    assert mem.status == "pass" and mem.unit == "MB"


def test_emulated_absolute_uses_the_prediction_interval() -> None:
    rounds = _flat([10.0, 10.1, 9.9, 10.0])
    d = decide_absolute("m", parse_budget("latency_ms", 12)[0], rounds)
    assert d.status == "warn"  # 12 lies inside the ±30 % prediction interval
    assert d.high >= 13.0 and d.source == "emulated" and d.notes
    assert decide_absolute("m", parse_budget("latency_ms", 14)[0], rounds).status == "pass"


# --- exact figures and the whole model ---------------------------------------------------------


def test_exact_budgets() -> None:
    assert decide_exact("m", parse_budget("size_mb", 5)[0], 4.9).status == "pass"
    assert decide_exact("m", parse_budget("size_mb", 5)[0], 5.1).status == "fail"
    assert decide_exact("m", parse_budget("accuracy", 0.97)[0], 0.96).status == "fail"
    assert decide_exact("m", parse_budget("size_mb", "+5%")[0], 2.2, 2.0).status == "fail"
    assert decide_exact("m", parse_budget("size_mb", "+5%")[0], 2.0, None).status == "skip"


def test_decide_model_and_exit_code() -> None:
    budgets = [*parse_budget("latency_ms", ["+5%", "<= 1"]), *parse_budget("size_mb", 5),
               *parse_budget("accuracy", 0.9)]
    ds = decide_model("m", budgets, REF[:4], None, size_mb=2.1, accuracy=0.95)
    assert [d.status for d in ds] == ["skip", "pass", "pass", "pass"]
    assert exit_code(ds) == 0
    ds = decide_model("m", budgets, SLOW, REF[:4], size_mb=6.0, accuracy=0.95)
    assert [d.status for d in ds] == ["fail", "pass", "fail", "pass"]
    assert exit_code(ds) == 1
