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
