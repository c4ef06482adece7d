"""`edge-search run` end to end: real training, real ONNX Runtime, real SQLite Optuna and MLflow stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from edge_search.cli import main
from edge_search.devices.profile import get_profile
from edge_search.pareto import dominates
from edge_search.tracking import absolute_sqlite
from tests.conftest import FAST_MEASURE

pytestmark = pytest.mark.slow


def _child_runs(tracking_uri: str, study: str) -> list:  # type: ignore[type-arg]
    client = MlflowClient(absolute_sqlite(tracking_uri))
    parent = optuna.load_study(study_name=study, storage="sqlite:///edge-search.db").user_attrs[
        "mlflow_parent_run_id"]
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)


def _assert_pareto_tags_match_dominance(study_name: str) -> None:
    study = optuna.load_study(study_name=study_name, storage="sqlite:///edge-search.db")
    names = study.user_attrs["objectives"]
    dirs = ["maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
    runs = _child_runs("sqlite:///mlflow.db", study_name)
    done = [r for r in runs if r.data.tags["trial_state"] == "COMPLETE"]
    feasible = [r for r in done if r.data.tags["feasible"] == "true"]
    def vector(r: Any) -> list[float]:  # a confirmed figure (`confirm`) replaces the search's own
        return [r.data.metrics.get(f"confirmed_{n}", r.data.metrics[n]) for n in names]

    for r in done:
        vec = vector(r)
        dominated = any(dominates(vector(o), vec, dirs) for o in feasible if o is not r)
        want = r.data.tags["feasible"] == "true" and not dominated
        assert r.data.tags["pareto"] == ("true" if want else "false"), (r.data.tags, vec)
        if want:  # front runs carry their ONNX model
            arts = MlflowClient(absolute_sqlite("sqlite:///mlflow.db")).list_artifacts(r.info.run_id, "model")
            assert [a.path for a in arts] == ["model/model.onnx"]


def test_run_logs_trials_front_and_pareto_json(workdir: Path, small_space: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--space", str(small_space), "--trials", "6", "--sampler", "random", *FAST_MEASURE])
    assert code == 0
    out = capsys.readouterr().out
    assert "study digits-small-host: 6 distinct configurations evaluated" in out
    study = optuna.load_study(study_name="digits-small-host", storage="sqlite:///edge-search.db")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    assert study.metric_names == ["accuracy", "latency_ms", "size_mb"]  # optuna-dashboard's labels
    assert max(t.values[0] for t in complete) >= 0.95  # accuracy on the held-out test split

    # one child run per trial, each with params, metrics, latency source and cache tags
    runs = _child_runs("sqlite:///mlflow.db", "digits-small-host")
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)) == len(study.trials)
    r0 = next(r for r in runs if r.data.tags["trial_state"] == "COMPLETE")
    assert r0.data.tags["latency_source"] == "measured"
    assert {"latency_ms", "latency_p90_ms", "size_mb", "peak_memory_mb", "accuracy"} <= set(r0.data.metrics)
    assert "cache_hit.train" in r0.data.tags and "deploy.precision" in r0.data.params
    assert r0.data.metrics["peak_memory_mb"] > 0
    _assert_pareto_tags_match_dominance("digits-small-host")

    assert main(["pareto", "--study", "digits-small-host", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and set(front[0]) == {"trial", "params", "values", "mlflow_run_id", "latency_source",
                                       "latency_ci_low_ms", "latency_ci_high_ms", "latency"}
    assert {p["latency"]["source"] for p in front} == {"confirmed"}  # the run confirmed its front
    assert set(front[0]["values"]) == {"accuracy", "latency_ms", "size_mb"}
    assert {p["latency_source"] for p in front} == {"measured"}
    assert all(p["latency_ci_low_ms"] <= p["values"]["latency_ms"] <= p["latency_ci_high_ms"] for p in front)
    by_id = {r.info.run_id: r for r in runs}
    assert all(by_id[p["mlflow_run_id"]].data.tags["pareto"] == "true" for p in front)
    # the smallest model is always on the front; with int8 sampled it is an int8 one
    sizes = {t.number: t.values[2] for t in complete}
    smallest = min(sizes, key=lambda n: sizes[n])
    assert smallest in {p["trial"] for p in front} or any(
        sizes[p["trial"]] == sizes[smallest] for p in front)

    # running again continues the same study (no new trials needed: already 6)
    assert main(["run", "--space", str(small_space), "--trials", "7", "--sampler", "random", *FAST_MEASURE]) == 0
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 7


def test_shared_training_is_cached(workdir: Path, tmp_path: Path) -> None:
    space = tmp_path / "cache.yaml"
    space.write_text("""\
schema_version: 1
name: cache
task: digits-cnn
train: {epochs: 3, width: 0.5, depth: 1}
deploy:
  precision: {choices: [fp32, int8-dynamic]}
objectives: [accuracy, latency_ms]
""")
    assert main(["run", "--space", str(space), "--trials", "4", "--sampler", "random", *FAST_MEASURE]) == 0
    study = optuna.load_study(study_name="cache-host", storage="sqlite:///edge-search.db")
    evaluated = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("outcome", "evaluated") == "evaluated"]
    # two configurations in the space: each evaluated once, the second reusing the trained model;
    # the space is then exhausted and the run ends (issue 14: --trials counts distinct configurations)
    hits = [t.user_attrs["cache_hits"] for t in evaluated]
    assert len(hits) == 2 and hits[0]["train"] is False and hits[1]["train"] is True
    runs = _child_runs("sqlite:///mlflow.db", "cache-host")
    assert sorted(r.data.tags["cache_hit.train"] for r in runs if "cache_hit.train" in r.data.tags) == [
        "false", "true"]


def test_constraint_no_trial_meets(workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "impossible.yaml"
    space.write_text("""\
schema_version: 1
name: impossible
task: digits-cnn
train: {epochs: 2, width: 0.5, depth: 1}
objectives: [accuracy, latency_ms]
constraints: ["latency_ms <= 0.00001"]
""")
    assert main(["run", "--space", str(space), "--trials", "2", *FAST_MEASURE]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the one error line
    assert err[-1] == ("edge-search run: error: no trial of study 'impossible-host' met the constraints "
                       "(latency_ms <= 1e-05); 1 finished trials are kept")
    assert any("space exhausted: all 1 distinct configurations seen" in line for line in err)


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "toaster"], "unknown device 'toaster'"),
    (["--space", "missing.yaml"], "missing.yaml: cannot read"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--storage", "nonsense"], "is not a database URL"),
])
def test_bad_input_is_one_line_exit_2(workdir: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], message: str) -> None:
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_unknown_train_knob_is_input_error(workdir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "knob.yaml"
    space.write_text("schema_version: 1\nname: k\ntask: digits-cnn\ntrain: {dropout: 0.1}\n"
                     "objectives: [accuracy]\n")
    assert main(["run", "--space", str(space), "--trials", "1"]) == 2
    assert "train.dropout: unknown train knob for task 'digits-cnn'" in capsys.readouterr().err


STUDY_DB = "sqlite:///edge-search.db"


def _trials() -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="digits-small-host", storage=STUDY_DB).get_trials()
    except KeyError:
        return []


def _last_heartbeat(trial_id: int) -> object:
    import sqlalchemy

    engine = sqlalchemy.create_engine(absolute_sqlite(STUDY_DB))
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)).first()
    engine.dispose()
    return row[0] if row else None


def _running_trial_of(proc: subprocess.Popen[str], deadline: float) -> optuna.trial.FrozenTrial:
    """A trial `proc` is running (owner recorded, MLflow run opened), once one trial is complete."""
    while True:
        assert time.monotonic() < deadline and proc.poll() is None, "the process never ran a trial"
        trials = _trials()
        mine = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                and t.user_attrs["owner"]["pid"] == proc.pid]
        if mine and any(t.state == TrialState.COMPLETE for t in trials):
            return mine[0]
        time.sleep(0.2)


def test_frozen_and_killed_processes_lose_nothing(workdir: Path, small_space: Path) -> None:
    """The issue's case and kill -9, on one SQLite study. Two `edge-search run` share it; A is
    SIGSTOPped mid-trial: after the grace period B fails A's trial and redoes it with the same
    parameters while A is still frozen. Then B is SIGKILLed mid-trial and its command run again (C):
    C recovers B's trial at start-up (its process is gone: no grace period) and redoes it. A,
    continued, drops its stale result. The study ends with exactly n finished trials and one MLflow
    child run per trial, the failed ones FAILED."""
    n, grace = 6, 4
    cmd = [sys.executable, "-m", "edge_search", "run", "--space", str(small_space), "--trials", str(n),
           "--sampler", "random", "--heartbeat-interval", "1", "--grace-period", str(grace), *FAST_MEASURE]

    def start(seed: int) -> subprocess.Popen[str]:
        return subprocess.Popen([*cmd, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    a, b = start(0), start(1)
    procs = [a, b]
    deadline = time.monotonic() + 420
    try:
        frozen = _running_trial_of(a, deadline)
        # Stop A while it trains, just after a heartbeat: SQLite cannot take a lock back from a
        # stopped process, so A must not be stopped inside a database write (see docs/recovery.md).
        beat = _last_heartbeat(frozen._trial_id)
        while _last_heartbeat(frozen._trial_id) == beat and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(a.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        while not [t for t in _trials() if t.user_attrs.get("retry_of") == frozen.number
                   and t.state in (TrialState.RUNNING, TrialState.COMPLETE)]:
            assert time.monotonic() - t_stop < grace + 90, "the frozen trial was not redone"
            time.sleep(0.2)
        assert time.monotonic() - t_stop >= grace - 1, "failed before its grace period was over"

        killed = _running_trial_of(b, deadline)
        b.kill()
        b.wait()
        c = start(2)
        procs.append(c)
        out_c = c.communicate(timeout=400)
        assert c.returncode == 0, out_c[1][-3000:]
        # "its process died", or, when C starts after the grace period (a loaded machine), "its
        # process stopped sending heartbeats": either way recovered at start-up with the same parameters
        assert f"recovered trial {killed.number} redone with the same parameters: its process " in out_c[1]
    finally:
        os.kill(a.pid, signal.SIGCONT)
        for p in procs:
            if p is not a and p.poll() is None:
                p.kill()
    out_a = a.communicate(timeout=300)
    assert a.returncode == 0, out_a[1][-3000:]
    assert f"trial {frozen.number} was failed and redone elsewhere while this process was stopped" in out_a[1]

    trials = _trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for lost in (frozen, killed):
        assert trials[lost.number].state == TrialState.FAIL
        redo = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
        # the same parameters as far as the lost trial had sampled them (define-by-run)
        assert len(redo) == 1 and {k: redo[0].params[k] for k in lost.params} == lost.params
    redo_of_killed = next(t for t in trials if t.user_attrs.get("retry_of") == killed.number)
    reason = (trials[killed.number].user_attrs.get("fail_reason")
              or redo_of_killed.user_attrs.get("retry_reason", ""))
    assert "died" in reason or "stopped sending heartbeats" in reason, reason  # which first: the load decides
    runs = _child_runs("sqlite:///mlflow.db", "digits-small-host")
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)) == len([t for t in trials if "mlflow_run_id" in t.user_attrs])
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[frozen.user_attrs["mlflow_run_id"]] == status[killed.user_attrs["mlflow_run_id"]] == "FAILED"
    assert all(status[t.user_attrs["mlflow_run_id"]] == "FINISHED" for t in trials if t.state == TrialState.COMPLETE)
    _assert_pareto_tags_match_dominance("digits-small-host")


def test_latency_gate_marks_trials_as_stopped(workdir: Path, tmp_path: Path) -> None:
    """The gate skips training for configurations that surely miss a latency bound: PRUNED with a
    reason, not counted. (And the early-stop rule's decisions; the CLI path is the next test.)"""
    from edge_search.pipeline import EarlyStopRule

    rule = EarlyStopRule(peers=lambda: [({2: 0.99, 4: 0.99, 8: 0.99}, 0.0001)] * 2)
    assert rule.dominated(4, 0.5, latency_ms=1.0)           # two faster, more accurate peers
    assert not rule.dominated(4, 0.98, latency_ms=1.0)      # within the margin
    assert not rule.dominated(3, 0.5, latency_ms=1.0)       # not a rung
    assert not rule.dominated(4, 0.5, latency_ms=0.00001)   # faster than every peer: survives

    space = tmp_path / "gate.yaml"
    space.write_text("""\
schema_version: 1
name: gate
task: digits-cnn
train: {epochs: {choices: [8, 16]}, width: {choices: [0.5, 2.0]}, depth: 1, lr: 0.02}
deploy: {intra_op_threads: 1}
objectives: [accuracy, latency_ms]
constraints: ["latency_ms <= 0.000001"]
""")
    code = main(["run", "--space", str(space), "--trials", "1", "--latency-gate", *FAST_MEASURE])
    assert code == 1  # every configuration is gated out, the run stops after 50 in a row
    study = optuna.load_study(study_name="gate-host", storage="sqlite:///edge-search.db")
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and all(t.user_attrs["stopped"] == "latency-gate" for t in pruned)
    assert "not trained" in pruned[0].user_attrs["invalid_reason"]
    assert not study.get_trials(states=(TrialState.COMPLETE,))


def test_early_stop_through_the_cli_marks_a_dominated_trial_as_stopped(workdir: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`edge-search run --early-stop`: after two finished trials of a small network that learns, a
    four-times-wider network deployed at batch 64 (far slower, so they are at least as fast) that
    learns nothing (lr 1e-5) is stopped at the first rung (epoch 2), recorded as PRUNED with its
    reason, and does not count;
    the run still ends with exactly N finished trials. The trial order is fixed with Optuna's
    public `enqueue_trial`; everything else is the command."""
    space = tmp_path / "es.yaml"
    space.write_text("""\
schema_version: 1
name: es
task: digits-cnn
train: {epochs: 8, width: {choices: [0.5, 2.0]}, depth: 1, lr: {choices: [0.02, 0.03, 0.05, 0.00001]}}
deploy: {intra_op_threads: 1, batch_size: {choices: [1, 64]}}
objectives: [accuracy, latency_ms]
""")
    study = optuna.create_study(study_name="es-host", storage="sqlite:///edge-search.db",
                                directions=["maximize", "minimize"])
    goods = [{"train.width": 0.5, "train.lr": lr, "deploy.batch_size": 1} for lr in (0.02, 0.03, 0.05)]
    bad = {"train.width": 2.0, "train.lr": 0.00001, "deploy.batch_size": 64}
    for params in (goods[0], goods[1], bad, goods[2]):  # distinct: one configuration is one trial
        study.enqueue_trial(params)
    assert main(["run", "--space", str(space), "--trials", "3", "--early-stop", "--confirm-rounds", "0",
                 *FAST_MEASURE]) == 0
    assert "3 distinct configurations evaluated" in capsys.readouterr().out
    trials = optuna.load_study(study_name="es-host", storage="sqlite:///edge-search.db").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.COMPLETE]
    stopped = trials[2]
    assert stopped.params == bad and stopped.user_attrs["stopped"] == "early-stop"
    assert "dominated at epoch 2" in stopped.user_attrs["invalid_reason"]
    assert all(t.user_attrs["val_curve"] for t in trials if t.state == TrialState.COMPLETE)


def test_a_board_profile_says_predicted_with_its_band_on_every_terminal_output(
        workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run --device jetson-nano`: the first line says predicted and the band, every progress line and
    the front (table and --json) carry latency_source and the interval; the GPU path is searched."""
    space = tmp_path / "gpu.yaml"
    space.write_text("""\
schema_version: 1
name: digits-gpu
task: digits-cnn
train: {epochs: 2, width: 0.5, depth: 1}
deploy:
  execution_provider: cuda
  precision: {choices: [fp32, fp16], available_only: true}
objectives: [accuracy, latency_ms, size_mb]
""")
    assert main(["run", "--device", "jetson-nano", "--space", str(space), "--trials", "2", "--sampler", "random"]) == 0
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    band_cal = get_profile("jetson-nano").calibration.error_band_gpu
    assert band_cal is not None
    band = band_cal.value
    assert "latency is PREDICTED" in err_lines[0] and f"GPU ±{band:.0%}" in err_lines[0], err_lines[0]
    progress = [ln for ln in err_lines if "trial " in ln and "latency_ms=" in ln]
    assert progress and all("latency predicted (emulated, GPU path)" in ln and " in [" in ln for ln in progress)
    assert "predicted (emulated)" in captured.out and "PREDICTED" in captured.out  # the front printed by run

    assert main(["pareto", "--study", "digits-gpu-jetson-nano"]) == 0
    table = capsys.readouterr().out
    assert "latency_source" in table and "interval (ms)" in table and "predicted (emulated)" in table
    assert "latency PREDICTED (emulated)" in table

    assert main(["pareto", "--study", "digits-gpu-jetson-nano", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and {p["latency_source"] for p in front} == {"emulated"}
    for p in front:
        lat, lo, hi = p["values"]["latency_ms"], p["latency_ci_low_ms"], p["latency_ci_high_ms"]
        assert lo < lat < hi and hi / lat == pytest.approx(lat / lo, rel=1e-3) and hi / lat >= 1 + band - 1e-3
        assert p["params"]["deploy.execution_provider"] == "cuda"
