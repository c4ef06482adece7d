"""A real `mlflow server` over a study's store: the documented filter finds the Pareto runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from edge_search.cli import main
from tests.dashboards import browser
from tests.shipping_study import STUDY, enter, shipping_study

pytestmark = pytest.mark.slow

FILTER = "tags.pareto = 'true'"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.load(resp))


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"mlflow server not healthy within {timeout_s} s")


def test_pareto_filter_through_the_rest_api(tmp_path_factory: pytest.TempPathFactory,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = enter(shipping_study(tmp_path_factory), monkeypatch)
    capsys.readouterr()  # drop what building the study printed
    assert main(["pareto", "--study", STUDY, "--json"]) == 0
    expected = {p["mlflow_run_id"] for p in json.loads(capsys.readouterr().out)}
    study = optuna.load_study(study_name=STUDY, storage="sqlite:///edge-search.db")
    parent = study.user_attrs["mlflow_parent_run_id"]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    try:
        _wait_healthy(base, proc, timeout_s=90)
        experiments = _post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        experiment_ids = [e["experiment_id"] for e in experiments]
        got = _post(f"{base}/api/2.0/mlflow/runs/search",
                    {"experiment_ids": experiment_ids, "filter": FILTER, "max_results": 1000})
        found = {r["info"]["run_id"] for r in got.get("runs", [])}
        assert found == expected and found
        for r in got["runs"]:  # every hit is a trial of this study, tagged as documented
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            assert tags["mlflow.parentRunId"] == parent and tags["pareto"] == "true"
        if os.environ.get("EDGE_SEARCH_UPDATE_DOCS") and browser.missing() is None:
            exp = next(e["experiment_id"] for e in experiments if e["name"].startswith("edge-search/"))
            _screenshot_ui(base, exp, tmp_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


def _screenshot_ui(base: str, experiment_id: str, tmp_path: Path) -> None:
    """The MLflow UI's runs page with the documented filter, for the README."""
    query = urllib.parse.quote(FILTER)
    with browser.chromium() as driver:
        driver.get(f"{base}/#/experiments/{experiment_id}/runs?searchFilter={query}")
        time.sleep(12)  # the React app loads and queries the server
        for script in (  # best effort: expand the study's parent run, close the assistant panel
                "Array.from(document.querySelectorAll('[role=gridcell][col-id*=\"Run Name\"]'))"
                ".forEach(c => c.querySelector('button, [role=button]')?.click())",
                "Array.from(document.querySelectorAll('button[aria-label]'))"
                ".filter(b => /close/i.test(b.getAttribute('aria-label'))).forEach(b => b.click())"):
            driver.execute_script(script)
        time.sleep(3)
        png = driver.get_screenshot_as_png()
    (tmp_path / "mlflow-ui.png").write_bytes(png)
    if not browser.is_blank(png):
        shutil.copyfile(tmp_path / "mlflow-ui.png", DOCS / "mlflow-ui.png")
