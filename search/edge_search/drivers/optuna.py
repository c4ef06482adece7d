"""The embedded driver: an ask/tell loop over an Optuna study, until N distinct configurations have
been evaluated (duplicates are recorded and skipped, failures told to the sampler as infeasible;
see `edge_search.drivers.ledger`)."""

from __future__ import annotations

import enum
import logging
import random
import time
import traceback

import optuna
from optuna.trial import TrialState

from edge_search.config import DeployConfig, TrialConfig
from edge_search.devices.stats import LatencyStats
from edge_search.drivers.base import DriverOptions
from edge_search.drivers.ledger import SpaceGrid, StudyLedger
from edge_search.errors import EdgeSearchError, InputError, InvalidConfig
from edge_search.pareto import latency_label
from edge_search.pipeline import GatedOut, Pipeline, StageFailed, StoppedEarly
from edge_search.progress import RunProgress
from edge_search.records import TrialRecord
from edge_search.recovery import TrialHeartbeat, ask, is_surplus, yield_surplus
from edge_search.space import suggest_config
from edge_search.study import StudySession

log = logging.getLogger(__name__)


def build_config(session: StudySession, trial: optuna.Trial, cores: int) -> TrialConfig:
    """Sample a trial's knobs from the space and type them; bad values are invalid configs."""
    raw = suggest_config(session.space, trial, cores)
    try:
        return TrialConfig(train=raw["train"], deploy=DeployConfig(**raw["deploy"]))
    except ValueError as err:
        raise InvalidConfig(str(err).splitlines()[0]) from None


class Outcome(enum.Enum):
    """What became of one asked trial."""

    EVALUATED = "evaluated"
    """A configuration evaluated for the first time: complete, counted."""
    DUPLICATE = "duplicate"
    """A configuration the study already has: recorded, not evaluated, not counted."""
    FAILED = "failed"
    """A deterministic failure (or a configuration that cannot be deployed): told as infeasible."""
    PRUNED = "pruned"
    """Stopped by the latency gate or early stopping."""
    CRASHED = "crashed"
    """A transient error (a worker crash, a timeout): FAIL, to be retried."""


def run_trial(session: StudySession, pipeline: Pipeline, trial: optuna.Trial, tell: bool = True,
              ledger: StudyLedger | None = None) -> tuple[Outcome, str]:
    """Evaluate one asked trial and record it; returns what became of it and a one-line summary.

    Duplicates, failures and pruned trials are always told here; an evaluated one only with `tell`
    (Ray's searcher tells complete trials itself). `ledger`: the study's configurations as the
    driver last read them (None: read now)."""
    if ledger is None:
        ledger = StudyLedger(session.study)
        ledger.scan()
    run_id: str | None = None
    key: str | None = None
    try:
        config = build_config(session, trial, pipeline.device_cores)
        key = pipeline.config_key(config)
        original = ledger.find(key)
        if original is not None:
            session.record_duplicate(trial, original)
            return Outcome.DUPLICATE, f"trial {trial.number} duplicate of trial {original.number}"
        trial.set_user_attr(TrialRecord.CONFIG_KEY, key)
        run_id = session.begin_trial(trial, config)
        pipeline.check(config)
        result = pipeline.evaluate(config)
    except StoppedEarly as err:
        trial.set_user_attr(TrialRecord.STOPPED, "early-stop")
        trial.set_user_attr(TrialRecord.VAL_CURVE, TrialRecord.curve_attr(err.curve))
        session.reject_trial(trial, run_id, TrialState.PRUNED, str(err))
        return Outcome.PRUNED, f"trial {trial.number} {err}"
    except GatedOut as err:
        trial.set_user_attr(TrialRecord.STOPPED, "latency-gate")
        session.reject_trial(trial, run_id, TrialState.PRUNED, str(err))
        return Outcome.PRUNED, f"trial {trial.number} stopped by the {err}"
    except InvalidConfig as err:
        session.record_failure(trial, run_id, cause="invalid", reason=f"invalid: {err}", stage="check")
        return Outcome.FAILED, f"trial {trial.number} invalid: {err}"
    except StageFailed as err:
        log.debug("trial %d failed:\n%s", trial.number, traceback.format_exc())
        session.record_failure(trial, run_id, cause=err.cause, reason=err.reason, stage=err.stage)
        return Outcome.FAILED, f"trial {trial.number} failed ({err.cause}): {err}"
    except InputError:
        raise
    except Exception as err:  # a failed trial must not end the study
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.debug("trial %d failed:\n%s", trial.number, traceback.format_exc())
        session.reject_trial(trial, run_id, TrialState.FAIL, reason)
        return Outcome.CRASHED, f"trial {trial.number} failed: {reason}"
    assert run_id is not None
    original = ledger.find(result.identity)
    if original is not None:  # written differently, built the same: one configuration after all
        session.record_duplicate(trial, original, run_id=run_id)
        return Outcome.DUPLICATE, f"trial {trial.number} duplicate of trial {original.number} (same model)"
    session.complete_trial(trial, run_id, result, tell=tell)
    vals = ", ".join(f"{k}={result.metrics[k]:.4g}" for k in session.space.objective_names)
    cached = "+".join(k for k, v in result.cache_hits.items() if v)
    tries = result.latency.extra.get("tries", 1)
    retried = f", measured in {tries} worker processes" if result.latency.extra.get("discarded") else ""
    return Outcome.EVALUATED, (f"trial {trial.number} {vals} | {latency_note(result.latency)}"
                               + (f" (cached: {cached})" if cached else "") + retried)


def latency_note(stats: LatencyStats) -> str:
    """'latency predicted (emulated, GPU path) 3.1 ms in [1.8, 5.3]' or 'latency measured 1.2 ms in [1.19, 1.22]'."""
    path = stats.extra.get("path") if stats.source == "emulated" else None
    label = latency_label(stats.source)
    if path:
        label = label.replace("(emulated)", f"(emulated, {str(path).upper()} path)")
    return f"latency {label} {stats.median_ms:.4g} ms in [{stats.ci_low_ms:.4g}, {stats.ci_high_ms:.4g}]"


def run_optuna(session: StudySession, pipeline: Pipeline, n_trials: int, progress: RunProgress,
               options: DriverOptions | None = None, *, max_consecutive_rejects: int = 50,
               max_consecutive_duplicates: int = 10, wait_s: float = 1.0) -> None:
    """The embedded `Driver`: ask and evaluate trials in this process until the study holds
    `n_trials` distinct evaluated configurations (`options.heartbeat`: one trial at a time, here,
    under a heartbeat).

    Duplicates and failures do not count. After `max_consecutive_duplicates` duplicate proposals in
    a row the next trial is a configuration not seen yet (from the enumerated space, else one random
    proposal); when a discrete space has no unseen configuration left, the run ends and says so.
    After `max_consecutive_rejects` failures in a row the run stops with the last reason rather
    than loop forever. Before each ask, and while other processes run the last trials, the trials
    of dead or frozen processes are failed and redone (`edge_search.recovery`).
    """
    heartbeat = options.heartbeat if options is not None else None
    sweeper = session.sweeper(heartbeat)
    ledger = StudyLedger(session.study)
    grid = SpaceGrid.of(session.space, pipeline)
    rng = random.Random(len(session.study.trials))
    if grid is not None and len(grid) < n_trials:
        progress.note(f"the space has {len(grid)} distinct deployable configurations: fewer than --trials "
                      f"{n_trials}; the run ends when it has seen them all")
    rejects = duplicates = 0
    while True:
        for recovered in sweeper.sweep():
            progress.note(recovered.summary())
        ledger.scan()
        if session.n_complete() >= n_trials:
            break
        if grid is not None and grid.exhausted(ledger):
            t = ledger.tally
            progress.note(f"space exhausted: all {len(grid)} distinct configurations seen "
                          f"({t.evaluated} evaluated, failed {t.failures_text()}); ending the run")
            break
        if session.n_complete() + session.n_running() >= n_trials:
            # Other processes share the study and run the last trials: wait for them rather than
            # overshoot; if one of them dies or freezes, the sweep fails its trial and it is redone here.
            time.sleep(wait_s)
            continue
        if duplicates >= max_consecutive_duplicates:
            duplicates = 0
            params = grid.pick_unseen(ledger, rng) if grid is not None else None
            if params is not None:
                session.study.enqueue_trial(params, user_attrs={TrialRecord.SEED_REASON: "not seen yet (the "
                                                                 "sampler repeated itself)"})
                trial = ask(session.study)
            else:
                trial = _ask_randomly(session, rng)
        else:
            trial = ask(session.study)
        with TrialHeartbeat(session.study, trial._trial_id, heartbeat) as beat:
            if is_surplus(session.study, trial.number, n_trials):  # another process asked for the last slot too
                yield_surplus(session.study, trial)
                continue
            try:
                outcome, line = run_trial(session, pipeline, trial, ledger=ledger)
            except Exception:
                if not beat.taken_over():
                    raise
                progress.note(f"trial {trial.number} was failed and redone elsewhere while this process was "
                              "stopped; its result is dropped")
                continue
        if outcome == Outcome.DUPLICATE:
            duplicates += 1
            if duplicates > 10 * max_consecutive_duplicates and grid is None:
                raise EdgeSearchError(f"{duplicates} proposals in a row were configurations the study already "
                                      "has; the space looks exhausted")
        else:
            duplicates = 0
        if outcome == Outcome.EVALUATED:
            rejects = 0
            session.update_front()
        elif outcome in (Outcome.FAILED, Outcome.PRUNED, Outcome.CRASHED):
            rejects += 1
            if rejects >= max_consecutive_rejects:
                raise EdgeSearchError(f"{rejects} configurations in a row were invalid or failed; last: {line}")
        if outcome != Outcome.DUPLICATE:
            ledger.scan()
            progress.update(session.n_complete(), line, len(session.front), best_summary(session),
                            tally=ledger.tally.line())


def _ask_randomly(session: StudySession, rng: random.Random) -> optuna.Trial:
    """One trial proposed by a random sampler (the study's own sampler keeps proposing what it has)."""
    sampler = session.study.sampler
    session.study.sampler = optuna.samplers.RandomSampler(seed=rng.randrange(1 << 30))
    try:
        return ask(session.study)
    finally:
        session.study.sampler = sampler


def best_summary(session: StudySession) -> str:
    """'best accuracy=0.97' for the first objective among feasible complete trials."""
    first = session.space.objectives[0]
    vals = [t.values[0] for t in session.study.best_trials if t.values]
    if not vals:
        return "no feasible trial yet"
    best = max(vals) if first.direction == "maximize" else min(vals)
    return f"best {first.name}={best:.4g}"
