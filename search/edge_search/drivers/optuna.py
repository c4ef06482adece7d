"""The embedded driver: an ask/tell loop over an Optuna study, until N trials have finished."""

from __future__ import annotations

import logging
import time
import traceback

import optuna
from optuna.trial import TrialState

from edge_search.config import DeployConfig, TrialConfig
from edge_search.drivers.base import DriverOptions
from edge_search.errors import EdgeSearchError, InputError, InvalidConfig
from edge_search.pipeline import GatedOut, Pipeline, StoppedEarly
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


def run_trial(session: StudySession, pipeline: Pipeline, trial: optuna.Trial,
              tell: bool = True) -> tuple[TrialState, str]:
    """Evaluate one asked trial and record it; returns its final state and a one-line summary.

    Invalid and failed trials are always told here; a complete one only with `tell` (Ray's
    searcher tells complete trials itself)."""
    run_id: str | None = None
    try:
        config = build_config(session, trial, pipeline.device_cores)
        run_id = session.begin_trial(trial, config)
        pipeline.check(config)
        result = pipeline.evaluate(config)
    except StoppedEarly as err:
        trial.set_user_attr(TrialRecord.STOPPED, "early-stop")
        trial.set_user_attr(TrialRecord.VAL_CURVE, TrialRecord.curve_attr(err.curve))
        session.reject_trial(trial, run_id, TrialState.PRUNED, str(err))
        return TrialState.PRUNED, f"trial {trial.number} {err}"
    except GatedOut as err:
        trial.set_user_attr(TrialRecord.STOPPED, "latency-gate")
        session.reject_trial(trial, run_id, TrialState.PRUNED, str(err))
        return TrialState.PRUNED, f"trial {trial.number} stopped by the {err}"
    except InvalidConfig as err:
        session.reject_trial(trial, run_id, TrialState.PRUNED, f"invalid: {err}")
        return TrialState.PRUNED, f"trial {trial.number} invalid: {err}"
    except InputError:
        raise
    except Exception as err:  # a failed trial must not end the study
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.debug("trial %d failed:\n%s", trial.number, traceback.format_exc())
        session.reject_trial(trial, run_id, TrialState.FAIL, reason)
        return TrialState.FAIL, f"trial {trial.number} failed: {reason}"
    assert run_id is not None
    session.complete_trial(trial, run_id, result, tell=tell)
    vals = ", ".join(f"{k}={result.metrics[k]:.4g}" for k in session.space.objective_names)
    cached = "+".join(k for k, v in result.cache_hits.items() if v)
    return TrialState.COMPLETE, f"trial {trial.number} {vals}" + (f" (cached: {cached})" if cached else "")


def run_optuna(session: StudySession, pipeline: Pipeline, n_trials: int, progress: RunProgress,
               options: DriverOptions | None = None, *, max_consecutive_rejects: int = 50,
               wait_s: float = 1.0) -> None:
    """The embedded `Driver`: ask and evaluate trials in this process until the study holds
    `n_trials` complete ones (`options.heartbeat`: one trial at a time, here, under a heartbeat).

    Invalid configurations and failures do not count; after `max_consecutive_rejects` of them in a
    row the run stops with the last reason rather than loop forever. Before each ask, and while
    other processes run the last trials, the trials of dead or frozen processes are failed and
    redone (`edge_search.recovery`).
    """
    heartbeat = options.heartbeat if options is not None else None
    sweeper = session.sweeper(heartbeat)
    rejects = 0
    while session.n_complete() < n_trials:
        for recovered in sweeper.sweep():
            progress.note(recovered.summary())
        if session.n_complete() + session.n_running() >= n_trials:
            # Other processes share the study and run the last trials: wait for them rather than
            # overshoot; if one of them dies or freezes, the sweep fails its trial and it is redone here.
            time.sleep(wait_s)
            continue
        trial = ask(session.study)
        with TrialHeartbeat(session.study, trial._trial_id, heartbeat) as beat:
            if is_surplus(session.study, trial.number, n_trials):  # another process asked for the last slot too
                yield_surplus(session.study, trial)
                continue
            try:
                state, line = run_trial(session, pipeline, trial)
            except Exception:
                if not beat.taken_over():
                    raise
                progress.note(f"trial {trial.number} was failed and redone elsewhere while this process was "
                              "stopped; its result is dropped")
                continue
        if state == TrialState.COMPLETE:
            rejects = 0
            session.update_front()
        else:
            rejects += 1
            if rejects >= max_consecutive_rejects:
                raise EdgeSearchError(f"{rejects} configurations in a row were invalid or failed; last: {line}")
        progress.update(session.n_complete(), line, len(session.front), best_summary(session))


def best_summary(session: StudySession) -> str:
    """'best accuracy=0.97' for the first objective among feasible complete trials."""
    first = session.space.objectives[0]
    vals = [t.values[0] for t in session.study.best_trials if t.values]
    if not vals:
        return "no feasible trial yet"
    best = max(vals) if first.direction == "maximize" else min(vals)
    return f"best {first.name}={best:.4g}"
