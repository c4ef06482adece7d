"""Shared fixtures: every test that runs a study works in its own temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the default SQLite stores and the cache land here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path


@pytest.fixture()
def small_space(tmp_path: Path) -> Path:
    """A quick digits space: short training, a few deploy knobs, three objectives."""
    p = tmp_path / "small.yaml"
    p.write_text(SMALL_SPACE)
    return p


SMALL_SPACE = """\
schema_version: 1
name: digits-small
task: digits-cnn
train:
  lr: {low: 0.005, high: 0.03, log: true}
  epochs: {low: 4, high: 8}
  width: {choices: [0.5, 1.0]}
  depth: {low: 1, high: 2}
deploy:
  precision: {choices: [fp32, int8-dynamic, int8-static]}
  calibration_method: {choices: [minmax, percentile], when: {precision: int8-static}}
  sparsity: {choices: [0.0, 0.5]}
  intra_op_threads: {low: 1, high: cores}
objectives:
  - accuracy: maximize
  - latency_ms: minimize
  - size_mb: minimize
constraints:
  - accuracy >= 0.5
"""

FAST_MEASURE = ["--max-measure-time", "1", "--precision-target", "0.05"]


def require(missing: str | None, env: str) -> None:
    """Skip the calling test when `missing` (why an optional service or extra is unavailable here),
    unless `env` is set to 1: then the test fails instead (CI sets it for everything it installs,
    so a broken install cannot pass as skipped tests)."""
    if missing is None:
        return
    if os.environ.get(env) == "1":
        pytest.fail(f"{missing} ({env}=1: required here)")
    pytest.skip(f"{missing} (set {env}=1 to make this a failure)")


def ray_missing() -> str | None:
    """Why the Ray tests cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed: pip install -e '.[ray]'"
    return None

os.environ.setdefault("PYTHONUNBUFFERED", "1")


PG_URL = os.environ.get("EDGE_SEARCH_TEST_POSTGRES", "postgresql://edge:edge@127.0.0.1:5432/edge_search_test")


def postgres_url() -> str:
    """The test database URL (``$EDGE_SEARCH_TEST_POSTGRES``); skips the calling test with the reason
    when no server answers (CI starts one and sets EDGE_SEARCH_REQUIRE_POSTGRES=1, which turns the
    skip into a failure)."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as err:  # no driver or no server
        if os.environ.get("EDGE_SEARCH_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL at {PG_URL} ({type(err).__name__}); .ci/run installs and starts one")
    return PG_URL


@pytest.fixture()
def postgres() -> str:
    """`postgres_url` as a fixture."""
    return postgres_url()
