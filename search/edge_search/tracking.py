"""MLflow layout: one experiment per (space, device), a parent run per study, a child run per trial.

Uses `MlflowClient` with explicit run ids throughout (never the fluent thread-local run stack), so
drivers that evaluate in worker threads or processes log to the right run. The Optuna study is the
source of truth: `reconcile` repairs the MLflow side after a crash from what the study recorded.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ID_ATTR = "mlflow_run_id"


def experiment_name(space_name: str, device: str) -> str:
    return f"edge-search/{space_name}/{device}"


def absolute_sqlite(url: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db`, so the store does not move with the working
    directory (Ray changes it in trials; MLflow caches one engine per URI string)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


class Tracker:
    """Writes a study's runs to MLflow; every method takes explicit ids."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = absolute_sqlite(tracking_uri or DEFAULT_TRACKING_URI)
        if self.tracking_uri.startswith("sqlite:///"):
            # MLflow creates and migrates a new SQLite store when a client first opens it; two
            # processes doing that at once collide (alembic), so opening is serialised.
            db = Path(self.tracking_uri.removeprefix("sqlite:///"))
            with FileLock(str(db) + ".lock", timeout=300):
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                self.client.search_experiments(max_results=1)
        else:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)

    # -- experiment and parent run ---------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # another process created it in between
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def start_parent(self, experiment_id: str, study_name: str, tags: Mapping[str, str],
                     params: Mapping[str, Any]) -> str:
        run = self.client.create_run(experiment_id, run_name=study_name,
                                     tags={"edge_search.role": "study", **tags})
        self.client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
        return str(run.info.run_id)

    def resume_parent(self, run_id: str) -> None:
        run = self.client.get_run(run_id)
        if run.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # -- child runs ---------------------------------------------------------------------------------

    def start_trial(self, experiment_id: str, parent_run_id: str, trial_number: int,
                    params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(
            experiment_id, run_name=f"trial-{trial_number:04d}",
            tags={"mlflow.parentRunId": parent_run_id, "trial_number": str(trial_number),
                  "trial_state": "RUNNING", "pareto": "false", **tags})
        self.client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
        return str(run.info.run_id)

    def finish_trial(self, run_id: str, state: str, metrics: Mapping[str, float], tags: Mapping[str, str],
                     step: int = 0) -> None:
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in metrics.items() if _finite(v)]
        ts = [RunTag(k, str(v)) for k, v in {**tags, "trial_state": state}.items()]
        for i in range(0, len(ms), 900):
            self.client.log_batch(run_id, metrics=ms[i:i + 900])
        self.client.log_batch(run_id, tags=ts)
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "INVALID": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(run_id, status=status)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_model_file(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path="model")

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_parent_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                               for k, v in metrics.items() if _finite(v)])

    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[Any]:
        """Every child run of a study's parent run (all pages)."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def mark_failed(self, run_ids: Iterable[str], reason: str) -> None:
        for rid in run_ids:
            self.set_tags(rid, {"trial_state": "FAIL", "fail_reason": reason})
            self.client.set_terminated(rid, status="FAILED")


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _finite(v: float) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
