"""`run_search`: everything `edge-search run` does, as one function with typed options."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from edge_search.cache import ArtifactCache
from edge_search.devices import create_device
from edge_search.devices.profile import get_profile
from edge_search.drivers import get_driver
from edge_search.drivers.base import DriverOptions
from edge_search.errors import EdgeSearchError, InputError
from edge_search.heartbeat import DEFAULT_GRACE_S, DEFAULT_INTERVAL_S, HeartbeatSettings
from edge_search.pareto import ParetoPoint, pareto_points
from edge_search.pipeline import STAGES, EarlyStopRule, Pipeline
from edge_search.progress import RunProgress
from edge_search.records import TrialRecord
from edge_search.space import SearchSpace, load_space
from edge_search.study import StudySession, make_storage
from edge_search.tasks import create_task
from edge_search.tracking import Tracker


@dataclass
class RunOptions:
    device: str = "host"
    space: str | None = None
    trials: int = 30
    study: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    tracking_uri: str | None = None
    cache_dir: Path = Path(".edge-search/cache")
    profiles: list[Path] = field(default_factory=list)
    precision_target: float = 0.02
    max_measure_s: float = 5.0
    backend: str = "optuna"
    workers: int = 2
    ray_address: str | None = None
    latency_gate: bool = False
    early_stop: bool = False
    heartbeat_interval: int = DEFAULT_INTERVAL_S
    grace_period: int = DEFAULT_GRACE_S


@dataclass
class RunSummary:
    study: str
    complete: int
    front: list[ParetoPoint]
    wall_s: float
    stage_s: dict[str, float]
    """Time this process spent in each pipeline stage, plus `other` (platform overhead)."""
    redone: list[int]
    feasible: bool


def default_study_name(space: SearchSpace, device: str) -> str:
    return f"{space.name}-{device}"


def run_search(opts: RunOptions, progress_stream: TextIO | None = None) -> RunSummary:
    """Open or resume the study and evaluate trials until `opts.trials` have finished."""
    if opts.trials < 1:
        raise InputError("--trials must be at least 1")
    driver = get_driver(opts.backend)
    if opts.workers < 1:
        raise InputError("--workers must be at least 1")
    t0 = time.perf_counter()
    space = load_space(opts.space)
    profile = get_profile(opts.device, opts.profiles)
    task = create_task(space.task.name, space.task.options)
    for name in space.train:
        if name not in task.train_knobs:
            raise InputError(f"{opts.space or space.name}: train.{name}: unknown train knob for task "
                             f"'{task.name}' (known: {', '.join(task.train_knobs)})")
    heartbeat = HeartbeatSettings(opts.heartbeat_interval, opts.grace_period)
    storage = make_storage(opts.storage, heartbeat)
    tracker = Tracker(opts.tracking_uri, idle_transaction_timeout_s=opts.grace_period)
    session = StudySession.open(space=space, device=opts.device, profile_version=profile.version,
                           study_name=opts.study or default_study_name(space, opts.device), storage=storage,
                           sampler_name=opts.sampler, seed=opts.seed, tracker=tracker)
    with create_device(profile) as device:
        pipeline = Pipeline(task, device, profile, ArtifactCache(opts.cache_dir), seed=space.seed,
                            precision_target=opts.precision_target, max_measure_s=opts.max_measure_s,
                            constraints=space.constraints, latency_gate=opts.latency_gate,
                            early_stop=EarlyStopRule(session.finished_curves) if opts.early_stop else None)
        redone = session.sweeper(heartbeat).sweep()
        session.update_front(full=True)
        started = time.time()
        complete = False
        try:
            with RunProgress(opts.trials, session.n_complete(), progress_stream) as progress:
                for recovered in redone:
                    progress.note(f"recovered {recovered.summary()}")
                driver(session, pipeline, opts.trials, progress,
                       DriverOptions(workers=opts.workers, address=opts.ray_address, storage_url=opts.storage,
                                     profiles=tuple(opts.profiles), heartbeat=heartbeat))
            complete = True
        finally:
            session.finish(complete)
    wall = time.perf_counter() - t0
    stages = _stage_totals(session, started)
    stages["other"] = max(0.0, wall - sum(stages.values()))
    front = pareto_points(session.study)
    feasible = bool(front)
    if not feasible and space.constraints:
        constraints = "; ".join(str(c) for c in space.constraints)
        raise EdgeSearchError(f"no trial of study '{session.name}' met the constraints ({constraints}); "
                              f"{session.n_complete()} finished trials are kept")
    return RunSummary(session.name, session.n_complete(), front, wall, stages, [r.number for r in redone], feasible)


def _stage_totals(session: StudySession, since: float) -> dict[str, float]:
    """Per-stage seconds of the trials that started since `since` (this run's, whichever worker)."""
    totals = dict.fromkeys(STAGES, 0.0)
    for t in session.study.get_trials(deepcopy=False):
        if t.datetime_start is None or t.datetime_start.timestamp() < since:
            continue
        for k, v in TrialRecord.of(t).timings.items():
            totals[k] = totals.get(k, 0.0) + v
    return totals
