"""Dashboard data: the hypervolume wrapper, the data computed from a real study, the figures, and
what `StudySession.finish()` logs to the parent MLflow run."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import optuna
import pytest

from edge_search.dashboards import figures
from edge_search.dashboards.data import (
    REFERENCE_ATTR,
    StudyData,
    TrialPoint,
    hypervolume,
    hypervolume_history,
    study_data,
    tracked_samples_loader,
)
from edge_search.dashboards.tracking import (
    FRONT_TABLE_ARTIFACT,
    HYPERVOLUME_METRIC,
    REPORT_ARTIFACT,
    log_study_dashboards,
)
from edge_search.pareto import pareto_points
from edge_search.study import StudySession
from edge_search.tracking import Tracker
from tests.shipping_study import STUDY, enter, shipping_study


@pytest.fixture()
def study_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(shipping_study(tmp_path_factory), monkeypatch)


def _brute_force_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by `points` below `ref`: sum the grid cells (between all coordinates) that
    some point dominates."""
    xs = np.unique(np.append(points[:, 0], ref[0]))
    ys = np.unique(np.append(points[:, 1], ref[1]))
    area = 0.0
    for x0, x1 in itertools.pairwise(xs):
        for y0, y1 in itertools.pairwise(ys):
            if x1 <= ref[0] and y1 <= ref[1] and np.any((points[:, 0] <= x0) & (points[:, 1] <= y0)):
                area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_brute_force_2d(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, 1, size=(rng.integers(1, 25), 2))
    ref = np.array([1.1, 1.2])
    assert hypervolume(pts, ref) == pytest.approx(_brute_force_2d(pts, ref), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("points", "ref", "volume"), [
    ([[1, 2], [2, 1]], [3, 3], 3.0),                          # two 2x1 boxes overlapping in a unit square
    ([[1, 1, 1]], [2, 2, 2], 1.0),
    ([[0, 1, 1], [1, 0, 1]], [2, 2, 2], 3.0),                 # 2 + 2 - the shared unit cube
    ([[0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]], [1, 1, 1, 1], 1.0),  # the second point is dominated
    ([[0, 0, 0, 1], [0, 0, 1, 0]], [2, 2, 2, 2], 8 + 8 - 4),  # 2*2*2*1 each, shared 2*2*1*1
])
def test_hypervolume_known_values(points: list[list[float]], ref: list[float], volume: float) -> None:
    """Exact values worked out by hand (inclusion-exclusion of the dominated boxes), in 2-4 objectives."""
    assert hypervolume(np.array(points, dtype=float), np.array(ref, dtype=float)) == pytest.approx(volume, rel=1e-12)


def test_hypervolume_drops_points_beyond_the_reference() -> None:
    ref = np.array([1.0, 1.0])
    assert hypervolume(np.array([[2.0, 0.0], [0.5, 1.0]]), ref) == 0.0
    assert hypervolume(np.array([[0.5, 0.5], [2.0, 0.0]]), ref) == pytest.approx(0.25)
    assert hypervolume(np.empty((0, 2)), ref) == 0.0


def _point(n: int, acc: float, lat: float, *, feasible: bool = True, front: bool = False,
           threads: int = 1, precision: str = "fp32") -> TrialPoint:
    return TrialPoint(number=n, values={"accuracy": acc, "latency_ms": lat},
                      params={"train.lr": 0.01, "deploy.precision": precision,
                              "deploy.intra_op_threads": threads},
                      metrics={"accuracy": acc, "latency_ms": lat}, feasible=feasible, on_front=front,
                      latency_source="measured", run_id=None)


def test_hypervolume_history_counts_only_feasible_and_never_drops() -> None:
    trials = [_point(0, 0.9, 2.0), _point(1, 0.99, 1.0, feasible=False), _point(2, 0.95, 1.5),
              _point(3, 0.8, 3.0)]
    hist = hypervolume_history(trials, ["accuracy", "latency_ms"], ["maximize", "minimize"],
                               {"accuracy": 0.5, "latency_ms": 4.0})
    assert [n for n, _ in hist] == [0, 1, 2, 3]
    assert hist[0][1] == pytest.approx(0.4 * 2.0)
    assert hist[1][1] == hist[0][1]  # the infeasible trial adds nothing
    assert hist[2][1] == pytest.approx(0.45 * 2.5)  # trial 2 dominates trial 0
    assert hist[3][1] == hist[2][1]


def test_two_objective_figures_separate_front_dominated_and_infeasible() -> None:
    trials = [_point(0, 0.9, 2.0, front=True, threads=1), _point(1, 0.99, 1.0, feasible=False, threads=2),
              _point(2, 0.95, 1.5, front=True, threads=2, precision="int8-dynamic"), _point(3, 0.8, 3.0)]
    data = StudyData(study_name="s", device="host", objectives=["accuracy", "latency_ms"],
                     directions=["maximize", "minimize"], trials=trials, hypervolume=[(0, 0.1), (3, 0.2)],
                     reference={"accuracy": 0.5, "latency_ms": 4.0})
    fig = figures.pareto_front(data)
    by_name = {t.name: t for t in fig.data if t.name}
    assert list(by_name["Pareto front"].x) == [2.0, 1.5]
    assert list(by_name["dominated"].x) == [3.0] and list(by_name["infeasible"].x) == [1.0]
    hover = by_name["Pareto front"].text[1]
    assert all(k in hover for k in ("train.lr", "deploy.precision = int8-dynamic", "deploy.intra_op_threads"))
    knobs = figures.knob_effects(data)
    assert {t.name for t in knobs.data} == {"fp32", "int8-dynamic"}  # one colour per precision
    assert knobs.layout.annotations[0].text == "intra_op_threads"
    labels = [d.label for d in figures.parallel_coordinates(data).data[0].dimensions]
    assert labels == ["intra_op_threads", "precision", "accuracy", "latency_ms", "on front"]


@pytest.mark.slow
def test_study_data_from_a_real_study(study_dir: Path) -> None:
    study = optuna.load_study(study_name=STUDY, storage="sqlite:///edge-search.db")
    data = study_data(study, samples=tracked_samples_loader(Tracker()))
    assert len(data.trials) == 6 and data.objectives == ["accuracy", "latency_ms", "size_mb"]
    assert [t.number for t in data.front] == [p.trial for p in pareto_points(study)]
    hv = [h for _, h in data.hypervolume]
    assert len(hv) == 6 and hv[-1] > 0 and all(b >= a for a, b in itertools.pairwise(hv))
    assert [s.trial for s in data.latency] == [t.number for t in data.front]
    assert all(len(s.samples_ms) >= 20 and s.source == "measured" for s in data.latency)  # raw samples
    front_fig = figures.pareto_front(data)  # three objectives: a matrix of the three pairs
    assert sum(1 for t in front_fig.data if t.name == "Pareto front") == 3


@pytest.mark.slow
def test_finish_logged_the_dashboards_once_and_relogging_is_idempotent(study_dir: Path) -> None:
    study = optuna.load_study(study_name=STUDY, storage="sqlite:///edge-search.db")
    parent = study.user_attrs["mlflow_parent_run_id"]
    tracker = Tracker()
    client = tracker.client

    def steps() -> list[int]:
        return sorted(m.step for m in client.get_metric_history(parent, HYPERVOLUME_METRIC))

    # one hypervolume step per evaluated configuration (failure and duplicate entries have no figures)
    evaluated = [t.number for t in study.trials
                 if t.state.name == "COMPLETE" and t.user_attrs.get("outcome", "evaluated") == "evaluated"]
    assert steps() == evaluated
    assert REFERENCE_ATTR in study.user_attrs
    arts = {a.path for d in (None, "dashboards") for a in client.list_artifacts(parent, d)}
    assert {REPORT_ARTIFACT, FRONT_TABLE_ARTIFACT} <= arts
    log_study_dashboards(study, tracker, parent)  # as a resumed run's finish() would
    assert steps() == evaluated
    table = json.loads(tracker.read_text(parent, FRONT_TABLE_ARTIFACT))
    assert [row[0] for row in table["data"]] == [p.trial for p in pareto_points(study)]
    logged = json.loads(client.get_run(parent).data.tags["mlflow.loggedArtifacts"])
    assert logged.count({"path": FRONT_TABLE_ARTIFACT, "type": "table"}) == 1


def test_finish_survives_a_dashboard_failure(caplog: pytest.LogCaptureFixture) -> None:
    tracker = mock.Mock()
    session = SimpleNamespace(update_front=lambda full: set(), study=mock.Mock(), tracker=tracker,
                              parent_run_id="p", name="s")
    fail = mock.patch("edge_search.dashboards.tracking.log_study_dashboards",
                      side_effect=RuntimeError("boom"))
    with fail, caplog.at_level(logging.WARNING):
        StudySession.finish(session, True)  # type: ignore[arg-type]
    tracker.finish_parent.assert_called_once_with("p", "FINISHED")
    assert "could not log the dashboards of study 's' to MLflow: boom" in caplog.text
