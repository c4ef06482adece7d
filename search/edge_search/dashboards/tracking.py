"""Log a study's dashboards to its MLflow parent run: the report, the front table, the hypervolume.

Called by `StudySession.finish()` at the end of every `edge-search run` (and safe to call again:
the report and the table are overwritten, hypervolume steps already logged are not logged twice).
"""

from __future__ import annotations

import optuna

from edge_search.dashboards.data import (
    REFERENCE_ATTR,
    directions,
    reference_point,
    study_data,
    tracked_samples_loader,
    trial_points,
)
from edge_search.dashboards.report import front_table, report_html
from edge_search.pareto import objective_names
from edge_search.tracking import Tracker

REPORT_ARTIFACT = "dashboards/report.html"
FRONT_TABLE_ARTIFACT = "pareto_front.json"
HYPERVOLUME_METRIC = "hypervolume"


def log_study_dashboards(study: optuna.Study, tracker: Tracker, parent_run_id: str) -> None:
    """Log the report (self-contained HTML), the front table and the hypervolume history.

    The hypervolume reference point is fixed in the study the first time this runs, so values
    logged earlier stay valid when a resumed study logs its new steps.
    """
    if REFERENCE_ATTR not in study.user_attrs:
        trials = trial_points(study)
        if not trials:
            return
        ref = reference_point(trials, objective_names(study), directions(study))
        study.set_user_attr(REFERENCE_ATTR, ref)
    data = study_data(study, samples=tracked_samples_loader(tracker))
    tracker.log_text(parent_run_id, report_html(data), REPORT_ARTIFACT)
    columns, rows = front_table(data)
    tracker.log_table(parent_run_id, columns, rows, FRONT_TABLE_ARTIFACT)
    logged = tracker.metric_steps(parent_run_id, HYPERVOLUME_METRIC)
    tracker.log_metric_steps(parent_run_id, HYPERVOLUME_METRIC,
                             {step: hv for step, hv in data.hypervolume if step not in logged})
    tracker.set_tags(parent_run_id, {"pareto_front_size": str(len(data.front)),
                                     "pareto_trials": ",".join(str(t.number) for t in data.front)[:4900]})
