"""The Ray Tune driver: the same search, with trials spread over a Ray cluster's workers.

Ray Tune's `OptunaSearch` proposes configurations from the study's own Optuna storage (the same
study and sampler the embedded driver uses), every worker runs the same `Pipeline.evaluate`, and
results are recorded through the same `StudySession`, so `pareto`, the dashboards and `export` do
not care which back-end ran. Ray's pitfalls, handled here:

- Ray changes each trial's working directory: every store path is made absolute before the trial
  is shipped (`WorkerSpec`), never relative.
- A multi-objective `OptunaSearch` leaves a trial RUNNING in Optuna unless every objective key is
  reported: workers always report all of them; duplicates, failures and pruned trials are told by
  the worker itself first (the searcher's later `tell` on a finished trial is ignored).
- Duplicate proposals are recorded and not counted, as in the embedded driver; a discrete space's
  exhaustion is detected only by the embedded driver (a Ray round of nothing but duplicates
  stops the run with its "finished no trial" error).
- Device measurements stay exclusive across workers and machines: a named Ray actor per device
  (`RayDeviceLease`), taken before the machine's own lease; a renewal that fails stops the
  measurement.
- A worker that dies or freezes mid-trial: workers record the trial's heartbeat; the driver fails
  stale trials and queues them again with the same parameters (`edge_search.recovery`), and kills a
  stopped worker of this machine so that Tune gets its slot back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from edge_search.devices.lease import DeviceLease, FileLease, LeaseHandle, LeaseTimeout
from edge_search.drivers.base import DriverOptions
from edge_search.errors import MissingDependency
from edge_search.heartbeat import HeartbeatSettings
from edge_search.pipeline import Pipeline
from edge_search.progress import RunProgress
from edge_search.records import TrialRecord
from edge_search.recovery import Owner, Recovered, TrialHeartbeat
from edge_search.study import StudySession

log = logging.getLogger(__name__)

TRIAL_ID_KEY = "__optuna_trial_id"


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise MissingDependency("ray", "ray") from None
    return ray


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a Ray worker needs to evaluate trials; every path absolute."""

    space: dict[str, Any]
    device: str
    profiles: tuple[str, ...]
    storage_url: str
    tracking_uri: str
    cache_dir: str
    study_name: str
    precision_target: float
    max_measure_s: float
    lock_dir: str
    latency_gate: bool = False
    early_stop: bool = False
    env: dict[str, str] = field(default_factory=dict)
    heartbeat: HeartbeatSettings | None = None


# -- the Ray-side device lease --------------------------------------------------------------------

def _lease_actor_class() -> Any:
    ray = _import_ray()

    @ray.remote(num_cpus=0, max_concurrency=64)
    class DeviceLock:
        """One per device: grants the lease to one holder at a time, FIFO, with a time to live so a
        holder that died without releasing cannot block the device for ever."""

        def __init__(self) -> None:
            self.holder: str | None = None
            self.expires = 0.0

        async def acquire(self, holder: str, ttl_s: float, timeout_s: float) -> bool:
            deadline = time.monotonic() + timeout_s
            while self.holder is not None and time.monotonic() < self.expires:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.005)
            self.holder, self.expires = holder, time.monotonic() + ttl_s
            return True

        async def renew(self, holder: str, ttl_s: float) -> bool:
            if self.holder != holder:
                return False
            self.expires = time.monotonic() + ttl_s
            return True

        async def release(self, holder: str) -> None:
            if self.holder == holder:
                self.holder = None

    return DeviceLock


class RayDeviceLease(DeviceLease):
    """Exclusive device lease across a Ray cluster, then across this machine's processes.

    The holder renews its lease every `ttl_s / 3` seconds from a background thread; a holder that
    dies or freezes stops renewing and its lease lapses after `ttl_s`, so the device is never
    blocked for longer than that. A renewal that fails, times out or is refused (the lease lapsed
    and went to another holder) marks the handle lost: the measuring worker is killed and the
    measurement discarded (`LeaseHandle.check`, which also confirms the lease with the actor once
    more after the measurement).
    """

    def __init__(self, local: DeviceLease | None = None, ttl_s: float = 10.0) -> None:
        self.local = local or FileLease()
        self.ttl_s = ttl_s

    @contextlib.contextmanager
    def acquire(self, device_name: str, timeout: float | None = None) -> Iterator[LeaseHandle]:
        ray = _import_ray()
        actor = _lease_actor_class().options(name=f"edge-search-lease:{device_name}", namespace="edge-search",
                                             get_if_exists=True, lifetime="detached").remote()
        holder = f"{os.getpid()}-{time.time_ns()}"
        t0 = time.monotonic()
        wait = 1e9 if timeout is None else timeout
        if not ray.get(actor.acquire.remote(holder, self.ttl_s, wait)):
            raise LeaseTimeout(f"device '{device_name}' is busy on the cluster: no lease within {wait:g} s")
        try:
            with self.local.acquire(device_name, timeout) as handle:
                handle.wait_s = time.monotonic() - t0
                renewal = _Renewal(ray, actor, holder, self.ttl_s, handle)
                handle.add_check(renewal.renew)
                with renewal:
                    yield handle
        finally:
            with contextlib.suppress(Exception):  # a dead actor has nothing to release
                ray.get(actor.release.remote(holder), timeout=self.ttl_s)


class _Renewal:
    """Renews a Ray lease every ttl/3 s while the block runs; a failed renewal loses `handle`."""

    def __init__(self, ray: Any, actor: Any, holder: str, ttl_s: float, handle: LeaseHandle) -> None:
        self.ray, self.actor, self.holder, self.ttl_s, self.handle = ray, actor, holder, ttl_s, handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge-search-lease-renew", daemon=True)

    def renew(self) -> None:
        """One renewal now; marks the handle lost when the actor refuses it or does not answer."""
        try:
            ok = self.ray.get(self.actor.renew.remote(self.holder, self.ttl_s), timeout=self.ttl_s / 3)
        except Exception as err:  # the actor or its node is gone, or it did not answer in time
            self.handle.lose(f"the Ray lease could not be renewed ({type(err).__name__}: {err})")
            return
        if not ok:
            self.handle.lose("the Ray lease lapsed and went to another holder")

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            self.renew()

    def __enter__(self) -> _Renewal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the worker side --------------------------------------------------------------------------------

_WORKER_STATE: dict[tuple[str, str], tuple[StudySession, Any]] = {}


def _worker_state(spec: WorkerSpec) -> tuple[StudySession, Any]:
    """Per worker process: the study session and the pipeline (built once, reused for trials)."""
    key = (spec.storage_url, spec.study_name)
    if key not in _WORKER_STATE:
        _WORKER_STATE[key] = _build_worker_state(spec)
    return _WORKER_STATE[key]


def _build_worker_state(spec: WorkerSpec) -> tuple[StudySession, Any]:
    from edge_search.cache import ArtifactCache
    from edge_search.devices import create_device
    from edge_search.devices.profile import get_profile
    from edge_search.pipeline import EarlyStopRule, Pipeline
    from edge_search.space import SearchSpace
    from edge_search.study import make_storage
    from edge_search.tasks import create_task
    from edge_search.tracking import Tracker

    os.environ.update(spec.env)
    os.environ["EDGE_SEARCH_LOCK_DIR"] = spec.lock_dir
    space = SearchSpace.model_validate(spec.space)
    profile = get_profile(spec.device, [Path(p) for p in spec.profiles])
    kwargs: dict[str, Any] = {"lease": RayDeviceLease(FileLease(spec.lock_dir))} \
        if profile.latency.method == "local" else {}
    device = create_device(profile, **kwargs)
    task = create_task(space.task.name, space.task.options)
    session = StudySession.attach(space=space, device=spec.device, study_name=spec.study_name,
                                  storage=make_storage(spec.storage_url, spec.heartbeat),
                                  tracker=Tracker(spec.tracking_uri))
    pipeline = Pipeline(task, device, profile, ArtifactCache(Path(spec.cache_dir)), seed=space.seed,
                        precision_target=spec.precision_target, max_measure_s=spec.max_measure_s,
                        latency_gate=spec.latency_gate,
                        early_stop=EarlyStopRule(session.finished_curves) if spec.early_stop else None)
    return session, pipeline


def evaluate_in_worker(config: dict[str, Any], spec: WorkerSpec) -> dict[str, float]:
    """The Ray trainable: evaluate the Optuna trial named in `config`, report every objective."""
    from ray import tune

    from edge_search.drivers.optuna import Outcome, run_trial

    session, pipeline = _worker_state(spec)
    trial = optuna.Trial(session.study, int(config[TRIAL_ID_KEY]))
    with TrialHeartbeat(session.study, trial._trial_id, spec.heartbeat) as beat:
        try:
            outcome, _line = run_trial(session, pipeline, trial, tell=False)
        except Exception:
            if not beat.taken_over():
                raise
            outcome = Outcome.CRASHED  # this worker was stopped; the driver failed and redid its trial
    names = session.space.objective_names
    if outcome == Outcome.EVALUATED:
        metrics = TrialRecord.of(session.study._storage.get_trial(trial._trial_id)).metrics
        report = {n: metrics[n] for n in names}
    else:
        report = dict.fromkeys(names, math.nan)  # already told (duplicate, failed, pruned) by run_trial
    report["edge_search_outcome"] = float(list(Outcome).index(outcome))
    tune.report(report)
    return report


@dataclass(frozen=True)
class DefineByRun:
    """The space as Ray's define-by-run function (a picklable object: Tune checkpoints its searcher)."""

    space: dict[str, Any]
    cores: int

    def __call__(self, t: Any) -> dict[str, Any]:
        from edge_search.space import SearchSpace, suggest_config

        suggest_config(SearchSpace.model_validate(self.space), t, self.cores)
        # Ray wraps the Optuna trial in a captor; the worker needs the real trial's id to record
        # into the same study.
        inner = getattr(t, "ot_trial", t)
        return {TRIAL_ID_KEY: inner._trial_id}


def worker_spec(session: StudySession, pipeline: Pipeline, options: DriverOptions) -> WorkerSpec:
    """What Ray workers need to rebuild `pipeline`, with every path absolute (Ray changes a
    trial's working directory)."""
    from edge_search.devices.lease import default_lock_dir
    from edge_search.study import DEFAULT_STORAGE
    from edge_search.tracking import absolute_sqlite

    return WorkerSpec(space=session.space.model_dump(mode="json"), device=session.device,
                      profiles=tuple(str(Path(p).resolve()) for p in options.profiles),
                      storage_url=absolute_sqlite(options.storage_url or DEFAULT_STORAGE),
                      tracking_uri=session.tracker.tracking_uri, cache_dir=str(pipeline.cache.root.resolve()),
                      study_name=session.name, precision_target=pipeline.precision_target,
                      max_measure_s=pipeline.max_measure_s, lock_dir=str(default_lock_dir().resolve()),
                      latency_gate=pipeline.latency_gate, early_stop=pipeline.early_stop is not None,
                      env={k: v for k, v in os.environ.items() if k.startswith("EDGE_SEARCH_")},
                      heartbeat=options.heartbeat)


def run_ray(session: StudySession, pipeline: Pipeline, n_trials: int, progress: RunProgress,
            options: DriverOptions) -> None:
    """The Ray Tune `Driver`: rounds of Ray Tune trials until the study holds `n_trials` complete
    ones, `options.workers` at a time, on the cluster at `options.address` (None: a local one).
    Workers rebuild `pipeline` from its settings (`worker_spec`); it is not used here."""
    spec = worker_spec(session, pipeline, options)
    workers, address = options.workers, options.address
    ray = _import_ray()
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from edge_search.study import make_storage

    logging.getLogger("ray.tune.search.optuna").setLevel(logging.ERROR)
    # Tune's own tables and result loggers: edge-search prints its own progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    started_here = not ray.is_initialized()
    if started_here:
        tmp = tempfile.mkdtemp(prefix="es-ray-", dir="/tmp")  # Ray needs a short socket path
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, _temp_dir=tmp, log_to_driver=False,
                     configure_logging=False)
    cores = _cores(spec)
    space = session.space

    define_by_run = DefineByRun(space.model_dump(mode="json"), cores)
    sweep = _sweep_callback(session, options.heartbeat, progress)
    try:
        storage = make_storage(spec.storage_url)
        while session.n_complete() < n_trials:
            remaining = n_trials - session.n_complete()
            searcher = OptunaSearch(space=define_by_run, metric=space.objective_names,
                                    mode=["max" if d == "maximize" else "min" for d in space.directions],
                                    sampler=session.study.sampler, study_name=session.name, storage=storage)
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(evaluate_in_worker, spec=spec), {"cpu": 1}),
                tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=workers),
                                            num_samples=remaining, reuse_actors=True),
                run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="es-tune-"), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0), callbacks=[sweep]))
            tuner.fit()
            done = session.n_complete()
            session.update_front()
            progress.update(done, f"ray round: {remaining} trials asked", len(session.front),
                            _best(session))
            if done == n_trials - remaining:
                raise RuntimeError("a Ray round finished no trial; see the failed trials' reasons")
    finally:
        if started_here:
            ray.shutdown()


def _sweep_callback(session: StudySession, heartbeat: HeartbeatSettings | None, progress: RunProgress) -> Any:
    """A Tune callback that, every heartbeat interval, fails and redoes the trials of dead or frozen
    workers (the redo is the next trial OptunaSearch asks for). A frozen worker of this machine is
    killed, so that Tune gets its slot back: Ray notices dead processes, not stopped ones (one
    stopped on another machine keeps its slot until it resumes, then drops its result)."""
    from ray import tune

    sweeper = session.sweeper(heartbeat, observe_unowned=False)  # asked trials wait for a worker, unowned
    every_s = heartbeat.interval_s if heartbeat is not None else 10

    class Sweep(tune.Callback):
        due = 0.0

        def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
            if time.monotonic() < self.due:
                return
            self.due = time.monotonic() + every_s
            for recovered in sweeper.sweep():
                progress.note(recovered.summary())
                _end_stopped_worker(recovered)

    return Sweep()


def _end_stopped_worker(recovered: Recovered) -> None:
    """SIGKILL the process of a trial failed as stale if it still exists on this machine."""
    owner = Owner(**recovered.owner) if recovered.owner else None
    if owner is None or owner.host != socket.gethostname() or owner.dead_here() or owner.pid == os.getpid():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(owner.pid, signal.SIGKILL)
        log.warning("killed Ray worker pid %d: its trial %d went stale (stopped?)", owner.pid, recovered.number)


def _cores(spec: WorkerSpec) -> int:
    from edge_search.devices import thread_cores
    from edge_search.devices.profile import get_profile

    return thread_cores(get_profile(spec.device, [Path(p) for p in spec.profiles]))


def _best(session: StudySession) -> str:
    from edge_search.drivers.optuna import best_summary

    return best_summary(session)
