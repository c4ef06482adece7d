"""Issue 14 items 1 and 2: failures teach the sampler (told infeasible, cached, counted by cause) and
one configuration is one trial (duplicates recorded and not counted, the run ends when a discrete
space is exhausted, the front never lists a configuration twice).

A real study (SQLite), a real MLflow store, a real `Pipeline` with the `onnx` task (real ONNX
Runtime quantisation and evaluation); only the latency comes from a `FunctionDevice`, so the tests
are fast and the figures deterministic.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from edge_search.cache import ArtifactCache
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.profile import get_profile
from edge_search.devices.stats import LatencyStats
from edge_search.drivers.ledger import SpaceGrid, StudyLedger
from edge_search.drivers.optuna import Outcome, run_optuna, run_trial
from edge_search.pareto import front_trials
from edge_search.pipeline import Pipeline
from edge_search.progress import RunProgress
from edge_search.records import TrialRecord
from edge_search.space import parse_space
from edge_search.study import DUPLICATE, EVALUATION_FAILED, StudySession, make_storage
from edge_search.tasks.onnx_model import OnnxModelTask
from edge_search.testing import FunctionDevice
from edge_search.tracking import Tracker
from edge_search.transforms.quantize.int8 import QuantizeTransform
from tests.tasks.test_onnx_task import conv_classifier, images

NAN_RANGE = "autodetected range of [nan, nan] is not finite"


def _latency(request: MeasureRequest) -> LatencyStats:
    """Deterministic: a bigger model is slower, a second thread helps."""
    size = Path(request.model_path).stat().st_size / 1e4
    ms = size / (1.0 + 0.6 * (request.session.intra_op_threads - 1))
    return LatencyStats.from_samples([ms * f for f in (0.99, 1.0, 1.01)], device="fake")


class Harness:
    """A study, its pipeline and a progress sink, in `tmp`."""

    def __init__(self, tmp: Path, deploy: str, *, sampler: str = "tpe", seed: int = 0,
                 device: Device | None = None) -> None:
        model = conv_classifier(tmp / "m.onnx")
        np.savez(tmp / "d.npz", x=images(24))
        text = (f"schema_version: 1\nname: ledger\ntask: {{name: onnx, options: {{model: {model}, data: {tmp}/d.npz, "
                f"metric: fidelity_top1, eval_size: 16}}}}\ndeploy:\n{deploy}objectives: [fidelity_top1, latency_ms]\n")
        self.space = parse_space(yaml.safe_load(text), "ledger.yaml")
        self.device = FunctionDevice(_latency, name="host")
        task = OnnxModelTask(model=str(model), data=str(tmp / "d.npz"), metric="fidelity_top1", eval_size=16)
        self.pipeline = Pipeline(task, device or self.device, get_profile("host"), ArtifactCache(tmp / "cache"),
                                 max_measure_s=1.0)
        self.session = StudySession.open(space=self.space, device="host", profile_version="1", study_name="ledger",
                                         storage=make_storage(f"sqlite:///{tmp}/s.db"), sampler_name=sampler,
                                         seed=seed, tracker=Tracker(f"sqlite:///{tmp}/m.db"))
        self.out = io.StringIO()

    def run(self, n: int, **kw: Any) -> str:
        with RunProgress(n, self.session.n_complete(), self.out) as progress:
            run_optuna(self.session, self.pipeline, n, progress, **kw)
        return self.out.getvalue()

    def complete(self, outcome: str | None = None) -> list[optuna.trial.FrozenTrial]:
        ts = self.session.study.get_trials(states=(TrialState.COMPLETE,))
        return [t for t in ts if outcome is None or TrialRecord.of(t).outcome == outcome]


QUANT_SPACE = """\
  precision: {choices: [fp32, int8-static]}
  calibration_method: {choices: [minmax, percentile], when: {precision: int8-static}}
  per_channel: {choices: [false, true], when: {precision: int8-static}}
  calibration_size: 8
  intra_op_threads: {low: 1, high: 2}
"""


@pytest.fixture()
def percentile_fails(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Percentile calibration fails the way the issue saw it (deterministically); counts the builds."""
    calls: Counter[str] = Counter()
    real = QuantizeTransform.apply

    def apply(self: QuantizeTransform, src: Path, dst: Path, deploy: Any, task: Any) -> None:
        calls[deploy.calibration_method] += 1
        if deploy.precision == "int8-static" and deploy.calibration_method == "percentile":
            raise ValueError(NAN_RANGE)
        real(self, src, dst, deploy, task)

    monkeypatch.setattr(QuantizeTransform, "apply", apply)
    return calls


def test_failures_are_told_infeasible_cached_and_counted_by_cause(tmp_path: Path, percentile_fails: Counter[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path, QUANT_SPACE, sampler="random")
    out = h.run(50)
    # 2 fp32 + 8 int8-static configurations; the 4 with percentile calibration fail
    failed, evaluated = h.complete("failed"), h.complete("evaluated")
    assert len(evaluated) == 6 and h.session.n_complete() == 6
    assert len(failed) == 4 and not h.session.study.get_trials(states=(TrialState.FAIL,))
    for t in failed:
        record = TrialRecord.of(t)
        assert record.get(TrialRecord.FAIL_CAUSE) == "transform ValueError"
        assert NAN_RANGE in record.get(TrialRecord.FAIL_REASON)
        assert t.constraints[EVALUATION_FAILED] == 1.0 and t.constraints[DUPLICATE] == 0.0
        assert t.values == [-math.inf, math.inf]  # the worst values: maximised fidelity, minimised latency
    # a deterministic failure is built once per transform key: threads do not enter it, so the two
    # thread counts of each failing configuration cost one quantisation attempt, not two
    assert percentile_fails["percentile"] == 2
    assert ("space exhausted: all 10 distinct configurations seen (6 evaluated, failed 4 (transform ValueError 4))"
            in out)
    assert "failed 4 (transform ValueError 4)" in out  # progress counts failures by cause
    assert all(TrialRecord.of(t).evaluated for t in front_trials(h.session.study))
    # the same constraints, in the same order, on every trial (GPSampler needs it)
    assert len({tuple(t.constraints) for t in h.complete()}) == 1
    runs = {r.run_id: r for r in h.session.tracker.child_runs(h.session.experiment_id, h.session.parent_run_id)}
    assert {runs[TrialRecord.of(t).run_id or ""].status for t in failed} == {"FAILED"}


def test_a_recorded_failure_is_not_built_again_in_another_study(tmp_path: Path, percentile_fails: Counter[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    deploy = ("  precision: int8-static\n  calibration_method: percentile\n  calibration_size: 8\n"
              "  intra_op_threads: {low: 1, high: 2}\n")
    first = Harness(tmp_path, deploy)
    first.run(5)
    assert percentile_fails["percentile"] == 1
    (tmp_path / "s.db").unlink()
    second = Harness(tmp_path, deploy)  # a new study, the same artifact cache
    second.run(5)
    assert percentile_fails["percentile"] == 1  # answered from the recorded failure
    assert all("recorded earlier; not built again" in str(TrialRecord.of(t).get(TrialRecord.FAIL_REASON, "")) or
               NAN_RANGE in str(TrialRecord.of(t).get(TrialRecord.FAIL_REASON)) for t in second.complete("failed"))


def test_tpe_moves_away_from_a_failing_region_that_failed_trials_keep_it_in(tmp_path: Path) -> None:
    """The issue's 202 failures: a FAILED trial is invisible to TPE, so it keeps proposing the
    failing region; told infeasible, TPE moves away. Same seeds, same space, 40 distinct proposals."""
    space = parse_space(yaml.safe_load(
        "schema_version: 1\nname: s\ntask: digits-cnn\ndeploy:\n"
        "  precision: {choices: [fp32, int8-dynamic, int8-static]}\n"
        "  calibration_method: {choices: [minmax, entropy, percentile]}\n"
        "  calibration_size: {choices: [8, 16, 32, 64]}\n  sparsity: {choices: [0.0, 0.25, 0.5, 0.75]}\n"
        "objectives: [accuracy, latency_ms]\n"), "s.yaml")
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db")

    def failing(cfg: dict[str, Any]) -> bool:
        return bool(cfg["deploy.precision"] == "int8-static" and cfg["deploy.calibration_method"] == "percentile")

    def run(policy: str, seed: int) -> int:
        session = StudySession.open(space=space, device="host", profile_version="1", study_name=f"{policy}{seed}",
                                    storage=optuna.storages.InMemoryStorage(),
                                    sampler_name="tpe", seed=seed, tracker=tracker)
        from edge_search.space import suggest_config

        seen: set[str] = set()
        bad = 0
        while len(seen) < 40:
            trial = session.study.ask()
            cfg = {f"deploy.{k}": v for k, v in suggest_config(space, trial, 2)["deploy"].items()}
            key = repr(sorted(cfg.items()))
            if key in seen:
                session.record_duplicate(trial, None)
                continue
            seen.add(key)
            if failing(cfg):
                bad += 1
                if policy == "fail":
                    session.reject_trial(trial, None, TrialState.FAIL, "ValueError")
                else:
                    session.record_failure(trial, None, cause="transform ValueError", reason=NAN_RANGE,
                                           stage="transform")
                continue
            rng = np.random.default_rng(abs(hash(key)) % (1 << 32))
            session._set_constraints(trial, [])
            session.study.tell(trial, [float(rng.uniform(0.8, 1.0)), float(rng.uniform(1.0, 5.0))])
        return bad

    told_infeasible = sum(run("infeasible", s) for s in range(3))
    told_fail = sum(run("fail", s) for s in range(3))
    assert told_infeasible < told_fail


DUP_SPACE = """\
  precision: fp32
  calibration_method: {choices: [minmax, entropy, percentile]}
  intra_op_threads: {low: 1, high: 2}
"""


def test_duplicates_are_not_evaluated_or_counted_and_an_exhausted_space_ends_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """calibration_method does nothing at fp32 (the issue's front: one fp32 configuration 17 times):
    2 configurations, however many proposals."""
    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path, DUP_SPACE)
    out = h.run(6)
    assert h.session.n_complete() == 2 and len(h.complete("evaluated")) == 2
    assert len(h.device.requests) == 2  # each configuration measured once
    assert "space has 2 distinct deployable configurations: fewer than --trials 6" in out
    assert "space exhausted: all 2 distinct configurations seen (2 evaluated, failed 0)" in out
    dups = h.complete("duplicate")
    evaluated_numbers = {t.number for t in h.complete("evaluated")}
    for t in dups:
        assert TrialRecord.of(t).get(TrialRecord.DUPLICATE_OF) in evaluated_numbers
        assert t.constraints[DUPLICATE] == 1.0 and TrialRecord.of(t).run_id is None  # no MLflow run
    keys = [TrialRecord.of(t).config_key for t in front_trials(h.session.study)]
    assert len(keys) == len(set(keys))
    # resuming asks for more: still nothing new to evaluate
    h.run(6)
    assert h.session.n_complete() == 2 and len(h.device.requests) == 2


def test_the_same_model_written_differently_is_a_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8-dynamic ignores the calibration knobs, which its transform's cache key still names: the
    configurations differ before they are built and are recognised by what they produce."""
    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path, "  precision: int8-dynamic\n  calibration_size: {choices: [8, 16]}\n")
    ledger = StudyLedger(h.session.study)
    ledger.scan()
    outcomes = []
    for _ in range(2):
        trial = h.session.study.ask({"deploy.calibration_size": optuna.distributions.CategoricalDistribution([8, 16])})
        outcomes.append(run_trial(h.session, h.pipeline, trial, ledger=ledger)[0])
        ledger.scan()
    if len({TrialRecord.of(t).config_key for t in h.session.study.trials}) == 1:
        pytest.skip("the sampler proposed the same value twice")
    assert outcomes == [Outcome.EVALUATED, Outcome.DUPLICATE]
    dup = h.complete("duplicate")[0]
    runs = {r.run_id: r for r in h.session.tracker.child_runs(h.session.experiment_id, h.session.parent_run_id)}
    assert runs[TrialRecord.of(dup).run_id or ""].status == "KILLED"


class _Stubborn(optuna.samplers.RandomSampler):
    """Always proposes the first choice: a sampler that keeps repeating itself."""

    def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
        return dist.choices[0] if hasattr(dist, "choices") else dist.low


def test_a_sampler_that_repeats_itself_gets_unseen_configurations(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path, "  precision: fp32\n  intra_op_threads: {low: 1, high: 2}\n"
                          "  graph_optimization: {choices: [basic, all]}\n")
    h.session.study.sampler = _Stubborn()
    h.run(4, max_consecutive_duplicates=3)
    assert h.session.n_complete() == 4  # every configuration, although the sampler proposes one
    reasons = [TrialRecord.of(t).get(TrialRecord.SEED_REASON) for t in h.complete("evaluated")]
    assert sum(bool(r) for r in reasons) == 3


def test_grid_counts_only_deployable_configurations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path, "  precision: {choices: [fp32, fp16, int8-static]}\n"
                          "  graph_optimization: {choices: [disable, all]}\n")
    grid = SpaceGrid.of(h.space, h.pipeline)
    # fp16 is not supported by the host profile, int8-static with 'disable' is invalid: 3 remain
    assert grid is not None and len(grid) == 3


def test_the_front_keeps_one_trial_per_configuration(tmp_path: Path) -> None:
    """Two processes that evaluated one configuration at once (or a study from before duplicates
    were detected): the front shows it once."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "deploy.precision": optuna.distributions.CategoricalDistribution(["fp32", "int8-static"])}
    for number, (key, values) in enumerate([("a", [0.9, 2.0]), ("a", [0.9, 2.0]), ("b", [0.8, 1.0])]):
        study.add_trial(optuna.trial.create_trial(
            params={"deploy.precision": "fp32" if key == "a" else "int8-static"}, distributions=dist,
            values=values, user_attrs={TrialRecord.CONFIG_KEY: key, TrialRecord.OUTCOME: "evaluated"}))
        assert study.trials[-1].number == number
    assert [t.number for t in front_trials(study)] == [0, 2]
    old = optuna.create_study(directions=["maximize", "minimize"])  # no keys: the knobs decide
    for _ in range(2):
        old.add_trial(optuna.trial.create_trial(params={"deploy.precision": "fp32"}, distributions=dist,
                                                values=[0.9, 2.0]))
    assert len(front_trials(old)) == 1
