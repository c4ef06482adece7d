"""Log a study's dashboards to its MLflow parent run: the report, the front table, the hypervolume.

Called by `StudySession.finish()` at the end of every `edge-search run` (and safe to call again:
the report and the table are overwritten, hypervolume steps already logged are not logged twice).
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
from mlflow.entities import Metric

from edge_search.dashboards.data import (
    REFERENCE_ATTR,
    directions,
    mlflow_samples_loader,
    reference_point,
    study_data,
    trial_points,
)
from edge_search.dashboards.report import front_table, report_html
from edge_search.pareto import objective_names
from edge_search.tracking import Tracker

REPORT_ARTIFACT = "dashboards/report.html"
FRONT_TABLE_ARTIFACT = "pareto_front.json"
HYPERVOLUME_METRIC = "hypervolume"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
"""The tag MLflow's `log_table` sets so the UI lists a JSON artifact as a table."""


def log_study_dashboards(study: optuna.Study, tracker: Tracker, parent_run_id: str) -> None:
    """Log the report (self-contained HTML), the front table and the hypervolume history.

    The hypervolume reference point is fixed in the study the first time this runs, so values
    logged earlier stay valid when a resumed study logs its new steps.
    """
    client = tracker.client
    if REFERENCE_ATTR not in study.user_attrs:
        trials = trial_points(study)
        if not trials:
            return
        ref = reference_point(trials, objective_names(study), directions(study))
        study.set_user_attr(REFERENCE_ATTR, ref)
    data = study_data(study, samples=mlflow_samples_loader(client))
    client.log_text(parent_run_id, report_html(data), REPORT_ARTIFACT)
    _log_table(client, parent_run_id, *front_table(data))
    logged = {m.step for m in client.get_metric_history(parent_run_id, HYPERVOLUME_METRIC)}
    now = int(time.time() * 1000)
    new = [Metric(HYPERVOLUME_METRIC, float(hv), now, step)
           for step, hv in data.hypervolume if step not in logged]
    for i in range(0, len(new), 900):
        client.log_batch(parent_run_id, metrics=new[i:i + 900])
    tracker.set_tags(parent_run_id, {"pareto_front_size": str(len(data.front)),
                                     "pareto_trials": ",".join(str(t.number) for t in data.front)[:4900]})


def _log_table(client: Any, run_id: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Write the table in the layout `MlflowClient.log_table` uses (JSON, orient=split), replacing
    any earlier version (`log_table` itself appends rows to an existing file), and mark it as a table."""
    client.log_text(run_id, json.dumps({"columns": columns, "data": rows}, default=str), FRONT_TABLE_ARTIFACT)
    tags = client.get_run(run_id).data.tags
    listed = json.loads(tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": FRONT_TABLE_ARTIFACT, "type": "table"}
    if entry not in listed:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*listed, entry]))
