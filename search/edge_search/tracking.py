"""MLflow layout: one experiment per (space, device), a parent run per study, a child run per trial.

The `Tracker` is the only place that imports MLflow (the way only httpx's default transport
imports httpcore): the study, export/promote and the dashboards call its methods. It uses
`MlflowClient` with explicit run ids throughout (never the fluent thread-local run stack), so
drivers that evaluate in worker threads or processes log to the right run. The Optuna study is the
source of truth: `StudySession.update_front(full=True)` repairs the MLflow side after a crash from
what the study recorded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
"""The tag MLflow's `log_table` sets so the UI lists a JSON artifact as a table."""


@dataclass(frozen=True)
class TrackedRun:
    """A run as the tracker reports it: its id, MLflow status and tags."""

    run_id: str
    status: str
    tags: dict[str, str]


def experiment_name(space_name: str, device: str) -> str:
    return f"edge-search/{space_name}/{device}"


def absolute_sqlite(url: str) -> str:
    """`sqlite:///rel.db` -> `sqlite:////abs/rel.db`, so the store does not move with the working
    directory (Ray changes it in trials; MLflow caches one engine per URI string)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(Path(url[len(prefix):]).resolve())
    return url


DATABASE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql"}
"""Tracking URI schemes of MLflow's database store (the others are servers or folders)."""


def _with_idle_timeout(uri: str, seconds: int) -> str:
    """`uri` with ``options=-c idle_in_transaction_session_timeout=...`` for PostgreSQL (unless it
    has options of its own); other URIs unchanged."""
    parts = urlsplit(uri)
    if not parts.scheme.startswith("postgresql"):
        return uri
    query = parse_qsl(parts.query)
    if any(key == "options" for key, _ in query):
        return uri
    query.append(("options", f"-c idle_in_transaction_session_timeout={seconds * 1000}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


class Tracker:
    """Writes a study's runs to MLflow; every method takes explicit ids."""

    def __init__(self, tracking_uri: str | None = None, idle_transaction_timeout_s: int = 600) -> None:
        """On a PostgreSQL store the server ends a session that stays inside a transaction for longer
        than `idle_transaction_timeout_s`, so a stopped process does not hold MLflow's row locks for
        ever (the URI gets ``options=-c idle_in_transaction_session_timeout=...`` unless it has
        ``options`` of its own)."""
        self.tracking_uri = _with_idle_timeout(absolute_sqlite(tracking_uri or DEFAULT_TRACKING_URI),
                                               idle_transaction_timeout_s)
        if urlsplit(self.tracking_uri).scheme.split("+")[0] in DATABASE_SCHEMES:
            # MLflow creates and migrates a new database store when a client first opens it; two
            # processes doing that at once collide (alembic, or PostgreSQL's catalog), so opening is
            # serialised on this machine, by an expiring lease (a stopped opener blocks nobody).
            from edge_search.expiring_lease import machine_lease

            with machine_lease("mlflow-open", self.tracking_uri, "opening the MLflow store").hold(timeout=300):
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

    def delete_run(self, run_id: str) -> None:
        """Delete a run (one made by a step that turned out to be another process's to make)."""
        self.client.delete_run(run_id)

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
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "INVALID": "KILLED",
                  "DUPLICATE": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(run_id, status=status)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_model_file(self, run_id: str, path: Path) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path="model")

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics to any run, finished or not (a confirmation adds its figures to trial runs)."""
        self.log_parent_metrics(run_id, metrics, step)

    def log_parent_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step)
                                               for k, v in metrics.items() if _finite(v)])

    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[TrackedRun]:
        """Every child run of a study's parent run (all pages)."""
        runs: list[TrackedRun] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                max_results=1000, page_token=token)
            runs.extend(TrackedRun(str(r.info.run_id), str(r.info.status), dict(r.data.tags)) for r in page)
            token = page.token
            if not token:
                return runs

    def mark_failed(self, run_ids: Iterable[str], reason: str) -> None:
        for rid in run_ids:
            self.set_tags(rid, {"trial_state": "FAIL", "fail_reason": reason})
            self.client.set_terminated(rid, status="FAILED")

    # -- artifacts ----------------------------------------------------------------------------------

    def has_artifacts(self, run_id: str, path: str) -> bool:
        """Whether the run has anything under artifact folder `path`."""
        return bool(self.client.list_artifacts(run_id, path))

    def read_text(self, run_id: str, path: str) -> str:
        """Text of one run artifact; read straight from disk for a local artifact store (fast, no
        progress bar), through MLflow otherwise."""
        uri = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
        if uri.startswith("file:") or "://" not in uri:
            from mlflow.utils.file_utils import local_file_uri_to_path

            return Path(local_file_uri_to_path(uri)).read_text(encoding="utf-8")
        import mlflow.artifacts

        return str(mlflow.artifacts.load_text(uri))

    def download(self, run_id: str, path: str, dst_dir: Path) -> Path:
        """Download run artifact `path` into folder `dst_dir`; returns where it landed."""
        return Path(self.client.download_artifacts(run_id, path, str(dst_dir)))

    def log_folder(self, run_id: str, folder: Path, artifact_path: str) -> None:
        """Log every file of `folder` under the run's artifact folder `artifact_path`."""
        self.client.log_artifacts(run_id, str(folder), artifact_path=artifact_path)

    def log_table(self, run_id: str, columns: list[str], rows: list[list[Any]], artifact_file: str) -> None:
        """Write a table in the layout `MlflowClient.log_table` uses (JSON, orient=split), replacing any
        earlier version (`log_table` itself appends rows to an existing file), and mark it as a table."""
        self.client.log_text(run_id, json.dumps({"columns": columns, "data": rows}, default=str), artifact_file)
        tags = self.client.get_run(run_id).data.tags
        listed = json.loads(tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            self.client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*listed, entry]))

    # -- metric histories ---------------------------------------------------------------------------

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which metric `key` was logged on the run."""
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def log_metric_steps(self, run_id: str, key: str, values: Mapping[int, float]) -> None:
        """Log metric `key` at each step of `values` (step -> value)."""
        now = int(time.time() * 1000)
        new = [Metric(key, float(v), now, step) for step, v in values.items()]
        for i in range(0, len(new), 900):
            self.client.log_batch(run_id, metrics=new[i:i + 900])

    # -- the model registry -------------------------------------------------------------------------

    def register_version(self, name: str, run_id: str, artifact_path: str, *, tags: Mapping[str, str],
                         description: str, alias: str, model_tags: Mapping[str, str],
                         model_description: str) -> str:
        """Register the run's artifact folder `artifact_path` as a new version of model `name` (created
        with `model_tags` and `model_description` when missing), point `alias` at it; returns the version."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, tags=dict(model_tags), description=model_description)
        source = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags),
                                                   description=description)
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _finite(v: float) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
