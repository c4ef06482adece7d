"""`run_search`: everything `edge-search run` does, as one function with typed options."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge_search.cache import ArtifactCache
from edge_search.devices import create_device
from edge_search.devices.base import Device
from edge_search.devices.capabilities import device_capabilities
from edge_search.devices.emulation.carry import DEFAULT_ERROR_BAND
from edge_search.devices.profile import DeviceProfile, get_profile
from edge_search.drivers import get_driver
from edge_search.drivers.base import DriverOptions
from edge_search.drivers.ledger import StudyLedger, Tally
from edge_search.errors import EdgeSearchError, InputError
from edge_search.heartbeat import DEFAULT_GRACE_S, DEFAULT_INTERVAL_S, HeartbeatSettings
from edge_search.pareto import ParetoPoint, pareto_points
from edge_search.pipeline import STAGES, EarlyStopRule, Pipeline
from edge_search.progress import RunProgress
from edge_search.records import TrialRecord
from edge_search.space import SearchSpace, check_train_values, load_space, resolve_space
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
    baselines: bool = True
    """Start a new study with the configurations a user would try first (`edge_search.seeds`)."""
    confirm_rounds: int = 6
    """Re-measure the front in this many interleaved rounds at the end (`edge_search.confirm`); 0: not."""
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
    tally: Tally = field(default_factory=Tally)
    """Failures by cause, duplicates skipped and crashed trials of the whole study."""
    measurements: str = ""
    """One line: the measurements of this run and their warnings (`measurement_summary`)."""
    confirmation: str = ""
    """One line: what the confirmation of the front did (empty when there was none)."""


def latency_line(profile: DeviceProfile) -> str:
    """The first line of a run: where the latency figures come from and, when predicted, how sure they are."""
    method = profile.latency.method
    if method == "local":
        return f"device {profile.name}: latency measured on this machine (pinned worker processes)"
    if method == "agent":
        return (f"device {profile.name}: latency measured on the board through "
                f"{len(profile.latency.agents)} agent(s)")
    cal = profile.calibration
    if cal.physics is not None and cal.physics.bands:  # per path: cpu-fp32, cpu-int8, gpu
        bands = [f"{k.replace('-', ' ').replace('cpu', 'CPU').replace('gpu', 'GPU')} ±{v.value:.0%}"
                 for k, v in sorted(cal.physics.bands.items())]
    else:
        bands = [f"CPU path ±{cal.error_band.value:.0%}" if cal.error_band else
                 f"CPU path ±{DEFAULT_ERROR_BAND:.0%} (uncalibrated default)"]
        if profile.gpu_providers:
            gpu = cal.error_band_gpu or cal.error_band
            bands.append(f"GPU path ±{gpu.value:.0%}" if gpu else f"GPU path ±{DEFAULT_ERROR_BAND:.0%} (default)")
    return (f"device {profile.name}: latency is PREDICTED, not measured (emulated; interval band "
            f"{', '.join(bands)}); every figure is labelled latency_source=emulated with its interval")


def default_study_name(space: SearchSpace, device: str) -> str:
    return f"{space.name}-{device}"


def run_search(opts: RunOptions, progress_stream: TextIO | None = None) -> RunSummary:
    """Open or resume the study and evaluate trials until `opts.trials` have finished."""
    if opts.trials < 1:
        raise InputError("--trials must be at least 1")
    if opts.confirm_rounds < 0 or opts.confirm_rounds == 1:
        raise InputError("--confirm-rounds must be 0 (no confirmation) or at least 2")
    driver = get_driver(opts.backend)
    if opts.workers < 1:
        raise InputError("--workers must be at least 1")
    t0 = time.perf_counter()
    space = load_space(opts.space)
    profile = get_profile(opts.device, opts.profiles)
    stream = progress_stream or sys.stderr
    space, dropped = resolve_space(space, device_capabilities(profile))
    task = create_task(space.task.name, space.task.options)
    check_train_values(space, task.train_knobs, task.name, opts.space or space.name)
    heartbeat = HeartbeatSettings(opts.heartbeat_interval, opts.grace_period)
    storage = make_storage(opts.storage, heartbeat)
    tracker = Tracker(opts.tracking_uri, idle_transaction_timeout_s=opts.grace_period)
    session = StudySession.open(space=space, device=opts.device, profile_version=profile.version,
                           study_name=opts.study or default_study_name(space, opts.device), storage=storage,
                           sampler_name=opts.sampler, seed=opts.seed, tracker=tracker)
    # Only once the input is known good (space, task, stores, study): bad input is one line on stderr.
    print(latency_line(profile), file=stream, flush=True)
    for line in dropped:
        print(f"  {line}", file=stream, flush=True)
    with create_device(profile) as device:
        pipeline = Pipeline(task, device, profile, ArtifactCache(opts.cache_dir), seed=space.seed,
                            precision_target=opts.precision_target, max_measure_s=opts.max_measure_s,
                            constraints=space.constraints, latency_gate=opts.latency_gate,
                            early_stop=EarlyStopRule(session.finished_curves) if opts.early_stop else None)
        if opts.baselines and not session.study.trials:
            _seed(session, pipeline, opts.trials)
        redone = session.sweeper(heartbeat).sweep()
        session.update_front(full=True)
        started = time.time()
        complete = False
        measurements = confirmation = ""
        try:
            with RunProgress(opts.trials, session.n_complete(), progress_stream) as progress:
                for recovered in redone:
                    progress.note(f"recovered {recovered.summary()}")
                driver(session, pipeline, opts.trials, progress,
                       DriverOptions(workers=opts.workers, address=opts.ray_address, storage_url=opts.storage,
                                     profiles=tuple(opts.profiles), heartbeat=heartbeat))
                measurements = measurement_summary(session, started)
                confirmation = _confirm(session, device, opts.confirm_rounds, progress)
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
    ledger = StudyLedger(session.study)
    ledger.scan()
    return RunSummary(session.name, session.n_complete(), front, wall, stages, [r.number for r in redone], feasible,
                      ledger.tally,
                      measurements, confirmation)


def measurement_summary(session: StudySession, since: float) -> str:
    """One line on the measurements of the trials evaluated since `since`: how many, how many the
    engine flagged and why, how many were measured again, how many were used flagged."""
    from collections import Counter

    n = retried = extra = used_flagged = 0
    kinds: Counter[str] = Counter()
    for t in session.study.get_trials(deepcopy=False):
        record = TrialRecord.of(t)
        if not record.evaluated or t.datetime_start is None or t.datetime_start.timestamp() < since:
            continue
        lat = record.latency
        if not lat or record.latency_source != "measured":
            continue
        n += 1
        warnings = [str(w) for w in lat.get("warnings") or []]
        for w in warnings:
            kinds[w.split(":", 1)[0]] += 1
        if lat.get("discarded"):
            retried += 1
            extra += int(lat["discarded"])
        if any(w.startswith(("contended", "unstable")) for w in warnings):
            used_flagged += 1
    if not n:
        return "measurements: none in this run (cached or predicted)"
    flagged = ", ".join(f"{k} {v}" for k, v in kinds.most_common() if k != "retried")
    return (f"measurements: {n} in this run; {retried} re-measured after a contended/unstable worker "
            f"({extra} worker process(es) replaced); {used_flagged} used still flagged"
            + (f"; warnings: {flagged}" if flagged else "; no warnings"))


def _confirm(session: StudySession, device: Device, rounds: int, progress: RunProgress) -> str:
    """Confirm the front at the end of a run (measured devices only; nothing to confirm otherwise)."""
    from edge_search.confirm import confirm_front

    if rounds < 2 or device.latency_source != "measured" or not session.front:
        return ""
    try:
        done = confirm_front(session.study, device, rounds=rounds, note=progress.note)
    except InputError as err:  # e.g. the front's models left the cache
        progress.note(f"front not confirmed: {err}")
        return f"front not confirmed: {err}"
    session.record_confirmation()
    line = (f"front confirmed: {len(done.trials)} configuration(s) re-measured in {done.rounds} interleaved rounds"
            + (f" (+{done.extra_rounds} measured again)" if done.extra_rounds else "")
            + f" in {done.wall_s:.0f} s; {len(done.front)} on the confirmed front")
    return line


def _seed(session: StudySession, pipeline: Pipeline, n_trials: int) -> None:
    """Enqueue a new study's first configurations: at most a quarter of the trials asked for."""
    from edge_search.config import DeployConfig, TrialConfig
    from edge_search.errors import InvalidConfig
    from edge_search.seeds import first_configurations

    def key(raw: dict[str, dict[str, Any]]) -> str | None:
        try:
            config = TrialConfig(train=raw["train"], deploy=DeployConfig(**raw["deploy"]))
            pipeline.check(config)
            return pipeline.config_key(config)
        except (InvalidConfig, ValueError, KeyError):
            return None

    seeds = first_configurations(session.space, pipeline.device_cores, key=key, limit=max(1, n_trials // 4))
    session.enqueue_first(seeds)


def _stage_totals(session: StudySession, since: float) -> dict[str, float]:
    """Per-stage seconds of the trials that started since `since` (this run's, whichever worker)."""
    totals = dict.fromkeys(STAGES, 0.0)
    for t in session.study.get_trials(deepcopy=False):
        if t.datetime_start is None or t.datetime_start.timestamp() < since:
            continue
        for k, v in TrialRecord.of(t).timings.items():
            totals[k] = totals.get(k, 0.0) + v
    return totals
