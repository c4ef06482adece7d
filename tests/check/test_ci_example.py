"""The shipped CI example runs as documented: examples/ci/budgets.yaml and the workflow's own shell
steps, on a repository whose `deploy/` is a bundle `edge-search export` has just written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from edge_search.cli import main
from edge_search.pareto import pareto_points
from tests.shipping_study import STUDY, enter, shipping_study

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ci"
SKIPPED_STEPS = {"Install edge-search"}
"""Steps of the workflow not run here: the package under test is installed already."""


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
                          *args], cwd=repo, capture_output=True, text=True, check=True)
    return out.stdout


def test_ci_example_workflow_runs_as_documented_on_a_fresh_export(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    study_dir = enter(shipping_study(tmp_path_factory), monkeypatch)
    import optuna

    study = optuna.load_study(study_name=STUDY, storage="sqlite:///edge-search.db")
    best = max(pareto_points(study), key=lambda p: p.values["accuracy"]).trial

    # the user's repository, laid out as examples/ci/README.md says, with its base branch on a remote
    origin, repo = tmp_path / "origin.git", tmp_path / "repo"
    _git(tmp_path, "init", "-q", "--bare", str(origin))
    _git(tmp_path, "init", "-q", str(repo))
    shutil.copy(EXAMPLE / "budgets.yaml", repo / "budgets.yaml")
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(EXAMPLE / "edge-search-check.yml", repo / ".github" / "workflows" / "edge-search-check.yml")
    assert main(["export", "--study", STUDY, "--trial", str(best), "-o", str(repo / "deploy"),
                 "--base-dir", str(study_dir)]) == 0
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "ship the model")
    _git(repo, "remote", "add", "origin", str(origin))
    _git(repo, "push", "-q", "origin", "main")
    _git(repo, "checkout", "-q", "-b", "pr")  # the pull request re-exports the same trial
    assert main(["export", "--study", STUDY, "--trial", str(best), "-o", str(repo / "deploy"),
                 "--base-dir", str(study_dir)]) == 0

    workflow = yaml.safe_load((repo / ".github" / "workflows" / "edge-search-check.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    scripts = [(s["name"], s["run"]) for s in steps if "run" in s and s["name"] not in SKIPPED_STEPS]
    assert {s.get("name") for s in steps if "run" in s} - {n for n, _ in scripts} == SKIPPED_STEPS
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    monkeypatch.chdir(repo)
    for name, script in scripts:
        script = script.replace("${{ github.base_ref }}", "main")
        assert "${{" not in script, f"step '{name}' uses a GitHub expression this test does not provide"
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"step '{name}' failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if name == "Check budgets":
            assert "all within budget" in done.stdout, done.stdout

    # every report the workflow uploads was written, with every budget of the example decided
    suite = ET.parse(repo / "latency.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    cases = {c.get("name") for c in suite.iter("testcase")}
    assert cases == {"latency_ms +5%", "latency_p90_ms <= 12", "size_mb <= 5", "peak_memory_mb <= 300",
                     "accuracy >= 0.97"}
    assert all(c.find("skipped") is None for c in suite.iter("testcase"))  # the baseline was found
    assert {e["name"] for e in json.loads((repo / "latency.json").read_text())} >= {"digits latency_ms"}
    assert "| digits |" in (tmp_path / "summary.md").read_text()
