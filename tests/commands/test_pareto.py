"""Commands that read a study (`pareto`, `report`, `export`, `promote`) create nothing when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from edge_search.cli import main


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("argv", [
    ["pareto", "--study", "missing"],
    ["pareto", "--study", "missing", "--json"],
    ["report", "--study", "missing", "-o", "r.html"],
    ["export", "--study", "missing", "--trial", "0", "-o", "out"],
    ["promote", "--study", "missing", "--trial", "0", "--name", "m"],
])
def test_missing_study_database_exits_2_and_creates_nothing(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                             argv: list[str]) -> None:
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "no study database at" in line and str(workdir / "edge-search.db") in line
    assert os.listdir(workdir) == []  # no edge-search.db, no mlflow.db, no output


def test_database_without_study_tables_is_left_untouched(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = workdir / "other.db"
    empty.touch()
    assert main(["pareto", "--study", "missing", "--storage", f"sqlite:///{empty}"]) == 2
    assert "no Optuna study database" in _one_line(capsys)
    assert empty.stat().st_size == 0 and os.listdir(workdir) == ["other.db"]


def test_unknown_study_lists_the_ones_there(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    optuna.create_study(study_name="real", storage="sqlite:///edge-search.db")
    before = (workdir / "edge-search.db").read_bytes()
    assert main(["pareto", "--study", "missing"]) == 2
    assert "no study named 'missing' (studies: real)" in _one_line(capsys)
    assert (workdir / "edge-search.db").read_bytes() == before


def test_front_table_shows_a_dash_for_knobs_a_configuration_did_not_choose(capsys: pytest.CaptureFixture[str]) -> None:
    from edge_search.commands.pareto import print_front
    from edge_search.pareto import ParetoPoint

    def point(trial: int, precision: str, method: str, sampled: set[str]) -> ParetoPoint:
        return ParetoPoint(trial=trial, params={"deploy.precision": precision, "deploy.calibration_method": method},
                           values={"accuracy": 0.9 + trial / 100, "latency_ms": 1.0 + trial}, mlflow_run_id=None,
                           sampled=frozenset(sampled))

    print_front([point(0, "fp32", "minmax", {"deploy.precision"}),  # minmax: the default, not chosen
                 point(1, "int8-static", "entropy", {"deploy.precision", "deploy.calibration_method"})])
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 3}
    assert "minmax" not in rows["0"] and "-" in [c.strip() for c in rows["0"].split("│")]
    assert "entropy" in rows["1"]
