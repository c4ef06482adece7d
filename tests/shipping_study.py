"""One small real study shared by the pick-and-ship tests (report, MLflow server, export, promote).

Built once per test session by running `edge-search run` (6 random trials of a quick digits space
with three objectives) in its own folder with a private device lock; tests chdir into it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_search.cli import main

STUDY = "ship-host"
SPACE = """\
schema_version: 1
name: ship
task: digits-cnn
train:
  epochs: {low: 3, high: 6}
  width: {choices: [0.5, 1.0]}
  depth: {low: 1, high: 2}
deploy:
  precision: {choices: [fp32, int8-dynamic]}
  intra_op_threads: {low: 1, high: cores}
objectives:
  - accuracy: maximize
  - latency_ms: minimize
  - size_mb: minimize
constraints:
  - accuracy >= 0.5
"""
QUICK_MEASURE = ["--max-measure-time", "0.3", "--precision-target", "0.1"]

_built: dict[str, Path] = {}


def shipping_study(factory: pytest.TempPathFactory) -> Path:
    """The folder holding the shared study (edge-search.db, mlflow.db, mlruns/, cache), built on first use."""
    if "dir" not in _built:
        folder = factory.mktemp("shipping-study")
        (folder / "space.yaml").write_text(SPACE)
        cwd, lock = os.getcwd(), os.environ.get("EDGE_SEARCH_LOCK_DIR")
        os.environ["EDGE_SEARCH_LOCK_DIR"] = str(folder / "locks")
        os.chdir(folder)
        try:
            code = main(["run", "--space", "space.yaml", "--trials", "6", "--sampler", "random",
                         "--seed", "3", *QUICK_MEASURE])
            assert code == 0
        finally:
            os.chdir(cwd)
            if lock is None:
                os.environ.pop("EDGE_SEARCH_LOCK_DIR", None)
            else:
                os.environ["EDGE_SEARCH_LOCK_DIR"] = lock
        _built["dir"] = folder
    return _built["dir"]


def enter(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside the shared study's folder for one test."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(folder / "locks"))
    return folder
