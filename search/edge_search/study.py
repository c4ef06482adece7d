"""A study as edge-search keeps it: the Optuna study (source of truth) plus its MLflow runs.

`StudySession` opens or resumes a study, hands out the `Sweeper` that fails and redoes the trials of
dead or frozen processes (`edge_search.recovery`), records each trial's result in both places, and
keeps the MLflow `pareto` tags current. Drivers (Optuna, Ray) decide which configurations to
evaluate and call into it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edge_search import __version__
from edge_search.config import TrialConfig
from edge_search.errors import EdgeSearchError, InputError
from edge_search.expiring_lease import ExpiringLease, HeldLease, LeaseLost, machine_lease
from edge_search.heartbeat import HeartbeatSettings
from edge_search.pareto import current_front
from edge_search.pipeline import TrialResult
from edge_search.records import StudyRecord, TrialRecord
from edge_search.recovery import Sweeper, configure_storage, stale_callback
from edge_search.samplers import make_sampler
from edge_search.space import SearchSpace
from edge_search.tracking import Tracker, absolute_sqlite, experiment_name

if TYPE_CHECKING:
    from edge_search.seeds import Seed

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///edge-search.db"
FITS_DEVICE = "fits_device"
EVALUATION_FAILED = "evaluation_failed"
"""Constraint set to 1 on a configuration whose evaluation failed deterministically (see `record_failure`)."""
DUPLICATE = "duplicate"
"""Constraint set to 1 on a proposal of a configuration the study already has (see `record_duplicate`)."""
IDLE_TRANSACTION_TIMEOUT_S = 600
"""PostgreSQL: a session idle inside a transaction this long is ended (without heartbeat settings)."""


def make_storage(url: str | None, heartbeat: HeartbeatSettings | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url` (default: SQLite file in the working directory).

    Every accepted URL is a SQLAlchemy database URL, so every storage is Optuna's `RDBStorage`:
    SQLite for one machine, PostgreSQL (``postgresql://...``) to share a study across machines.
    With `heartbeat`, running trials record heartbeats and the storage redoes a trial whose
    heartbeats stopped (`edge_search.recovery`). SQLite transactions begin IMMEDIATE, so Optuna's
    read-check-write steps are atomic across processes (`AtomicSQLiteStorage`); PostgreSQL sessions
    are ended by the server when a client stays inside a transaction for longer than the grace
    period, so a frozen process does not hold row locks for ever (unless the URL sets ``options``).
    """
    url = url or DEFAULT_STORAGE
    if "://" not in url:
        raise InputError(f"--storage '{url}' is not a database URL (e.g. sqlite:///edge-search.db)")
    url = absolute_sqlite(url)
    kwargs: dict[str, Any] = {}
    configure_storage(kwargs, heartbeat)
    cls: type[optuna.storages.RDBStorage] = optuna.storages.RDBStorage
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60, "isolation_level": None}}
        cls = AtomicSQLiteStorage
    elif url.startswith("postgresql") and "options=" not in url:
        grace_s = heartbeat.grace_s if heartbeat is not None else IDLE_TRANSACTION_TIMEOUT_S
        engine = {"connect_args": {"options": f"-c idle_in_transaction_session_timeout={grace_s * 1000}"}}
    try:
        # A new database gets its tables from the first process that opens it: serialised here.
        with machine_lease("storage-open", url, "opening the study storage").hold(timeout=120), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(url, engine_kwargs=engine, **kwargs)
    except ModuleNotFoundError as err:
        raise InputError(f"--storage {url.split(':')[0]}: driver not installed ({err.name}); "
                         "for PostgreSQL: pip install 'edge-search[postgres]'") from None
    except EdgeSearchError:
        raise
    except Exception as err:  # sqlalchemy.exc.OperationalError and friends
        raise InputError(f"--storage {url}: cannot open: {str(err).splitlines()[0]}") from None


class AtomicSQLiteStorage(optuna.storages.RDBStorage):
    """Optuna's `RDBStorage` on SQLite with every transaction opened by ``BEGIN IMMEDIATE``.

    pysqlite defers ``BEGIN`` to the first write, so Optuna's check-then-write steps (popping a
    queued trial, failing a stale one, telling) are not atomic across processes, and
    ``SELECT ... FOR UPDATE`` does not exist in SQLite: four processes popping a queue of 300
    trials popped 330 (30 configurations run twice). ``BEGIN IMMEDIATE`` takes the write lock
    first: 300. The listener is attached again after unpickling (Ray Tune pickles its searcher).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._begin_immediate()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._begin_immediate()

    def _begin_immediate(self) -> None:
        import sqlalchemy

        def begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        sqlalchemy.event.listen(self.engine, "begin", begin)


def open_existing_storage(url: str | None) -> optuna.storages.BaseStorage:
    """The storage at `url` to read studies that exist, creating nothing: no SQLite file, no tables.

    For commands that read a study (`pareto`, `report`, `export`, `promote`). Raises `InputError`
    when there is no database there, or it holds no Optuna tables.
    """
    url = absolute_sqlite(url or DEFAULT_STORAGE)
    if "://" not in url:
        raise InputError(f"--storage '{url}' is not a database URL (e.g. sqlite:///edge-search.db)")
    shown = url.split("@")[-1]  # never a password
    if url.startswith("sqlite:///") and ":memory:" not in url and not Path(url[len("sqlite:///"):]).is_file():
        raise InputError(f"no study database at {url[len('sqlite:///'):]} (`edge-search run` creates it; "
                         "--storage names another)")
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
    except ModuleNotFoundError as err:
        raise InputError(f"--storage {url.split(':')[0]}: driver not installed ({err.name}); "
                         "for PostgreSQL: pip install 'edge-search[postgres]'") from None
    except optuna.exceptions.StorageInternalError:  # reading the schema version failed: no tables
        raise InputError(f"no Optuna study database at {shown} (no study tables there; `edge-search run` "
                         "creates them)") from None
    except Exception as err:  # sqlalchemy.exc.OperationalError and friends
        raise InputError(f"--storage {shown}: cannot open: {str(err).splitlines()[0]}") from None


class StudySession:
    """One process's handle on a study and its MLflow parent run."""

    def __init__(self, study: optuna.Study, space: SearchSpace, device: str, tracker: Tracker,
                 sampler_name: str = "tpe") -> None:
        self.study = study
        self.space = space
        self.device = device
        self.tracker = tracker
        self.sampler_name = sampler_name
        self.experiment_id = tracker.experiment_id(experiment_name(space.name, device))
        self.parent_run_id: str = StudyRecord.of(study).parent_run_id or ""
        self.front: set[int] = set()

    @classmethod
    def open(cls, *, space: SearchSpace, device: str, profile_version: str, study_name: str,
             storage: optuna.storages.BaseStorage, sampler_name: str, seed: int, tracker: Tracker,
             extra_tags: dict[str, str] | None = None) -> StudySession:
        """Create the study (and its MLflow parent run) or resume it; checks it matches the space.

        Creation is serialised by an expiring lease (`edge_search.expiring_lease`) so that several
        processes started together on one machine create one parent run, not several, and a
        process frozen while creating does not block the others for more than the lease's ttl.
        """
        with _study_lease(storage, study_name).hold(timeout=120) as held:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study = optuna.create_study(study_name=study_name, storage=storage,
                                            directions=space.directions, load_if_exists=True,
                                            sampler=optuna.samplers.RandomSampler(seed=seed))
            self = cls(study, space, device, tracker, sampler_name)
            self._check_or_init_attrs(profile_version)
            self.parent_run_id = self._parent_run(extra_tags or {}, held)
        # Offset the seed by what the study already holds, so a resumed run does not replay the
        # same random proposals.
        self.study.sampler = make_sampler(sampler_name, seed + len(self.study.trials), len(space.objectives))
        return self

    @classmethod
    def attach(cls, *, space: SearchSpace, device: str, study_name: str, storage: optuna.storages.BaseStorage,
               tracker: Tracker) -> StudySession:
        """Join an existing study from a worker process (Ray), without creating anything."""
        study = optuna.load_study(study_name=study_name, storage=storage)
        return cls(study, space, device, tracker)

    @property
    def name(self) -> str:
        return self.study.study_name

    def _check_or_init_attrs(self, profile_version: str) -> None:
        attrs = self.study.user_attrs
        space_hash = self.space.space_hash()
        if StudyRecord.SPACE_HASH in attrs:
            if self.study.metric_names is None and attrs[StudyRecord.SPACE_HASH] == space_hash:
                self._set_metric_names()  # a study created before edge-search named its objectives
            if attrs[StudyRecord.SPACE_HASH] != space_hash:
                raise InputError(f"study '{self.name}' was created from a different search space "
                                 f"(hash {attrs[StudyRecord.SPACE_HASH]}, now {space_hash}); choose another --study")
            if attrs.get(StudyRecord.DEVICE) != self.device:
                raise InputError(f"study '{self.name}' belongs to device '{attrs.get(StudyRecord.DEVICE)}', "
                                 f"not '{self.device}'; choose another --study")
            return
        if len(self.study.directions) != len(self.space.objectives):
            raise InputError(f"study '{self.name}' exists with other objectives; choose another --study")
        self.study.set_user_attr(StudyRecord.SPACE_HASH, space_hash)
        self.study.set_user_attr(StudyRecord.SPACE, self.space.model_dump(mode="json"))
        self.study.set_user_attr(StudyRecord.DEVICE, self.device)
        self.study.set_user_attr(StudyRecord.PROFILE_VERSION, profile_version)
        self.study.set_user_attr(StudyRecord.OBJECTIVES, self.space.objective_names)
        self.study.set_user_attr(StudyRecord.TASK, self.space.task.name)
        self.study.set_user_attr(StudyRecord.VERSION, __version__)
        self._set_metric_names()

    def _set_metric_names(self) -> None:
        """Name the objectives in Optuna's own way: optuna-dashboard, `trials_dataframe` and Optuna's
        plots label them by these names (else "Objective 0", "Objective 1", ...)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names(self.space.objective_names)

    def _parent_run(self, extra_tags: dict[str, str], held: HeldLease | None = None) -> str:
        rid = StudyRecord.of(self.study).parent_run_id
        if rid:
            self.tracker.resume_parent(rid)
            return str(rid)
        tags = {"device": self.device, "sampler": self.sampler_name, "study": self.name,
                "objectives": ",".join(f"{o.name}:{o.direction}" for o in self.space.objectives),
                "constraints": "; ".join(str(c) for c in self.space.constraints),
                "space_hash": self.space.space_hash(), "task": self.space.task.name, **extra_tags}
        rid = self.tracker.start_parent(self.experiment_id, self.name, tags,
                                        {"space": json.dumps(self.space.model_dump(mode="json"))})
        if held is not None:
            try:
                held.check()  # stopped past the lease's ttl: another process may have made the parent run
            except LeaseLost:
                self.tracker.delete_run(rid)
                other = StudyRecord.of(optuna.load_study(study_name=self.name, storage=self.study._storage))
                if not other.parent_run_id:
                    raise EdgeSearchError(f"creating study '{self.name}' was interrupted (this process was "
                                          "stopped for too long); run the command again") from None
                self.tracker.resume_parent(other.parent_run_id)
                return other.parent_run_id
        self.study.set_user_attr(StudyRecord.PARENT_RUN_ID, rid)
        return rid

    def enqueue_first(self, seeds: Sequence[Seed]) -> int:
        """Enqueue a new study's first configurations (`edge_search.seeds`), once per study: under the
        study's creation lock, and only while it has no trial and no record of being seeded.
        Returns how many were enqueued."""
        with _study_lease(self.study._storage, self.name).hold(timeout=120):
            if StudyRecord.SEEDED in self.study.user_attrs or self.study.trials:
                return 0
            for seed in seeds:
                self.study.enqueue_trial(seed.params, user_attrs={TrialRecord.SEED_REASON: seed.reason})
            self.study.set_user_attr(StudyRecord.SEEDED, [s.reason for s in seeds])
        return len(seeds)

    # -- bookkeeping --------------------------------------------------------------------------------

    def n_complete(self) -> int:
        """Distinct configurations evaluated: complete trials that are neither failures nor
        duplicates (`TrialRecord.OUTCOME`); what ``--trials`` counts."""
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if TrialRecord.of(t).evaluated)

    def finished_curves(self) -> list[tuple[dict[int, float], float]]:
        """(validation curve, measured median latency) of complete trials, for early stopping."""
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = TrialRecord.of(t)
            if not record.evaluated:
                continue
            curve, metrics = record.val_curve, record.metrics
            if curve and "latency_ms" in metrics:
                out.append((curve, metrics["latency_ms"]))
        return out

    def n_running(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def sweeper(self, heartbeat: HeartbeatSettings | None, observe_unowned: bool = True) -> Sweeper:
        """A `Sweeper` for this study: it fails and redoes the trials of dead or frozen processes and
        marks their MLflow runs failed (see `edge_search.recovery`)."""
        callback = stale_callback(self.study)
        if callback is not None:
            callback.mark_failed = self._mark_run_failed
        return Sweeper(self.study, heartbeat, observe_unowned=observe_unowned, mark_failed=self._mark_run_failed)

    def _mark_run_failed(self, trial: FrozenTrial, reason: str) -> None:
        run_id = TrialRecord.of(trial).run_id
        if run_id:
            self.tracker.mark_failed([run_id], f"{reason}; redone as a new trial")

    def begin_trial(self, trial: optuna.Trial, config: TrialConfig) -> str:
        """Open the trial's MLflow child run (created once per trial); the driver has marked the
        trial's owner already (`edge_search.recovery.TrialHeartbeat`)."""
        trial.set_user_attr(TrialRecord.CONFIG_PARAMS, config.flat_params())
        run_id = self.tracker.start_trial(self.experiment_id, self.parent_run_id, trial.number,
                                          config.flat_params(), {"device": self.device})
        trial.set_user_attr(TrialRecord.RUN_ID, run_id)
        return run_id

    def values_of(self, result: TrialResult) -> list[float]:
        return [result.metrics[o.name] for o in self.space.objectives]

    def complete_trial(self, trial: optuna.Trial, run_id: str, result: TrialResult, *, tell: bool = True) -> None:
        """Record a finished evaluation on the trial and its MLflow run, then tell the study.

        With `tell=False` the caller's driver tells (Ray Tune's `OptunaSearch` does).
        """
        violations = [c.violation(result.metrics[c.metric]) for c in self.space.constraints]
        fits = 1.0 if result.infeasible else 0.0
        self._set_constraints(trial, violations, fits=fits)
        trial.set_user_attr(TrialRecord.OUTCOME, TrialRecord.EVALUATED)
        if result.identity:
            trial.set_user_attr(TrialRecord.RESULT_KEY, result.identity)
        trial.set_user_attr(TrialRecord.METRICS, result.metrics)
        trial.set_user_attr(TrialRecord.TIMINGS, result.timings)
        trial.set_user_attr(TrialRecord.CACHE_HITS, result.cache_hits)
        trial.set_user_attr(TrialRecord.LATENCY_SOURCE, result.latency_source)
        trial.set_user_attr(TrialRecord.LATENCY, TrialRecord.latency_summary(result.latency))
        trial.set_user_attr(TrialRecord.DEPLOYABLE_PATH, str(result.deployable))
        if result.input_shapes:
            trial.set_user_attr(TrialRecord.INPUT_SHAPES, result.input_shapes)
        if result.val_curve:
            trial.set_user_attr(TrialRecord.VAL_CURVE, TrialRecord.curve_attr(result.val_curve))
        if result.infeasible:
            trial.set_user_attr(TrialRecord.INFEASIBLE, result.infeasible)
        if tell:
            self.study.tell(trial, self.values_of(result))
        tags = {"latency_source": result.latency_source, "device": self.device,
                "feasible": str(all(v <= 0 for v in [*violations, fits])).lower(),
                **{f"cache_hit.{k}": str(v).lower() for k, v in result.cache_hits.items()}}
        if result.latency.extra.get("profile_version"):
            tags["profile_version"] = str(result.latency.extra["profile_version"])
        from edge_search.transforms.quantize.ort import fp32_node_tags

        tags.update(fp32_node_tags(result.deployable))  # int8: the nodes left in float32
        metrics = {**result.metrics, **{f"time_{k}_s": v for k, v in result.timings.items()}}
        self.tracker.finish_trial(run_id, "COMPLETE", metrics, tags, step=trial.number)
        self.tracker.log_text(run_id, result.latency.to_json(), "latency_stats.json")

    def _set_constraints(self, trial: optuna.Trial, violations: list[float], *, fits: float = 0.0,
                         failed: float = 0.0, duplicate: float = 0.0) -> None:
        """Every trial the study is told carries the same constraints, in the same order (one per
        space constraint, then fits-the-device, evaluation-failed, duplicate): GPSampler requires it."""
        for c, v in zip(self.space.constraints, violations, strict=True):
            trial.set_constraint(str(c), v)
        trial.set_constraint(FITS_DEVICE, fits)
        trial.set_constraint(EVALUATION_FAILED, failed)
        trial.set_constraint(DUPLICATE, duplicate)
        trial.set_user_attr(TrialRecord.CONSTRAINT_VIOLATIONS, [*violations, fits, failed, duplicate])

    def worst_values(self) -> list[float]:
        """+inf for a minimised objective, -inf for a maximised one (Optuna's samplers ignore the
        values of infeasible trials, GPSampler clips infinities to the worst finite value)."""
        return [float("-inf") if o.direction == "maximize" else float("inf") for o in self.space.objectives]

    def record_failure(self, trial: optuna.Trial, run_id: str | None, *, cause: str, reason: str,
                       stage: str, tell: bool = True) -> None:
        """A configuration whose evaluation failed deterministically (or that cannot be deployed):
        told COMPLETE with the worst values and the constraint `EVALUATION_FAILED` = 1, so every
        sampler counts it infeasible and moves away; never counted as an evaluated configuration."""
        trial.set_user_attr(TrialRecord.OUTCOME, TrialRecord.FAILED)
        trial.set_user_attr(TrialRecord.FAIL_REASON, reason)
        trial.set_user_attr(TrialRecord.FAIL_STAGE, stage)
        trial.set_user_attr(TrialRecord.FAIL_CAUSE, cause)
        self._set_constraints(trial, [0.0] * len(self.space.constraints), failed=1.0)
        if tell:
            self.study.tell(trial, self.worst_values())
        if run_id:
            self.tracker.finish_trial(run_id, "FAIL", {}, {TrialRecord.FAIL_REASON: reason[:4900],
                                                         TrialRecord.FAIL_CAUSE: cause})

    def record_duplicate(self, trial: optuna.Trial, original: FrozenTrial | None, *, run_id: str | None = None,
                         tell: bool = True) -> None:
        """A proposal of a configuration the study already has (complete, failed or being evaluated
        by another process): told COMPLETE with the original's values (worst values while it has
        none) and the constraint `DUPLICATE` = 1, so the sampler moves on; not evaluated, not counted."""
        trial.set_user_attr(TrialRecord.OUTCOME, TrialRecord.DUPLICATE)
        if original is not None:
            trial.set_user_attr(TrialRecord.DUPLICATE_OF, original.number)
        has_values = original is not None and original.state == TrialState.COMPLETE and bool(original.values)
        values = list(original.values) if has_values and original is not None else self.worst_values()
        violations = [0.0] * len(self.space.constraints)
        if has_values and original is not None:
            before = original.user_attrs.get(TrialRecord.CONSTRAINT_VIOLATIONS) or []
            violations = [float(v) for v in before[: len(violations)]] + violations[len(before):]
        self._set_constraints(trial, violations, duplicate=1.0)
        if tell:
            self.study.tell(trial, values)
        if run_id:
            self.tracker.finish_trial(run_id, "DUPLICATE", {}, {TrialRecord.DUPLICATE_OF: str(
                original.number if original is not None else "")})

    def reject_trial(self, trial: optuna.Trial, run_id: str | None, state: TrialState, reason: str) -> None:
        """An invalid configuration (PRUNED) or a failure (FAIL), with its reason on the trial."""
        key = TrialRecord.FAIL_REASON if state == TrialState.FAIL else TrialRecord.INVALID_REASON
        trial.set_user_attr(key, reason)
        self.study.tell(trial, state=state)
        if run_id:
            label = "INVALID" if state == TrialState.PRUNED else "FAIL"
            self.tracker.finish_trial(run_id, label, {}, {key: reason[:4900]})

    # -- Pareto tags --------------------------------------------------------------------------------

    def update_front(self, full: bool = False) -> set[int]:
        """Recompute the front; retag runs whose membership changed and attach models to new members.

        With `full`, every child run's tag is checked against the study (used at start and end, and
        the only way to see changes made by other processes sharing the study).
        """
        trials = {t.number: t for t in current_front(self.study)}
        new_front = set(trials)
        if full:
            runs = self.tracker.child_runs(self.experiment_id, self.parent_run_id)
            by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
            for run in runs:
                number = int(run.tags.get("trial_number", -1))
                t = by_number.get(number)
                if t is None or TrialRecord.of(t).run_id != run.run_id:
                    if run.status == "RUNNING" and (t is None or t.state.is_finished()):
                        # Its process died between creating the run and recording it on the trial.
                        self.tracker.mark_failed([run.run_id], "its process died before the trial recorded "
                                                               "this run; the trial was redone")
                    continue
                if t.state == TrialState.FAIL and run.status == "RUNNING":
                    # Its worker died and the driver failed it (Ray): close the run to match.
                    self.tracker.mark_failed([run.run_id], t.user_attrs.get(TrialRecord.FAIL_REASON, "worker died"))
                if t.state == TrialState.COMPLETE and run.status != "FINISHED" and TrialRecord.of(t).evaluated:
                    # Killed between `tell` and the MLflow write: the study has what the run lacks.
                    record = TrialRecord.of(t)
                    self.tracker.finish_trial(run.run_id, "COMPLETE", record.metrics,
                                              {"latency_source": record.latency_source or ""}, step=number)
                want = "true" if number in new_front else "false"
                if run.tags.get("pareto") != want:
                    self.tracker.set_tags(run.run_id, {"pareto": want})
                if want == "true" and not self.tracker.has_artifacts(run.run_id, "model"):
                    self._attach_model(t)
        else:
            for number in new_front - self.front:
                self.tracker.set_tags(trials[number].user_attrs[TrialRecord.RUN_ID], {"pareto": "true"})
                self._attach_model(trials[number])
            old = {t.number: t for t in self.study.get_trials(deepcopy=False)}
            for number in self.front - new_front:
                rid = TrialRecord.of(old[number]).run_id
                if rid:
                    self.tracker.set_tags(rid, {"pareto": "false"})
        self.front = new_front
        return new_front

    def _attach_model(self, trial: FrozenTrial) -> None:
        record = TrialRecord.of(trial)
        path, rid = Path(record.deployable_path), record.run_id
        if rid and path.is_file():
            self.tracker.log_model_file(rid, path)

    def record_confirmation(self) -> None:
        """After `edge_search.confirm.confirm_front`: the confirmed figures on each re-measured trial's
        MLflow run (``confirmed_latency_ms`` and its interval), the ``pareto`` tags from the confirmed
        front, the dashboards again."""
        conf = StudyRecord.of(self.study).confirmation
        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for number, fig in (conf.get("trials") or {}).items():
            t = by_number.get(int(number))
            rid = TrialRecord.of(t).run_id if t is not None else None
            if not rid:
                continue
            self.tracker.log_metrics(rid, {"confirmed_latency_ms": fig["median_ms"],
                                           "confirmed_latency_ci_low_ms": fig["ci_low_ms"],
                                           "confirmed_latency_ci_high_ms": fig["ci_high_ms"]})
            self.tracker.set_tags(rid, {"latency_figure": "confirmed", "confirmed_rounds": str(fig.get("rounds", ""))})
        self.update_front(full=True)

    def finish(self, complete: bool) -> None:
        self.update_front(full=True)
        try:  # figures, front table and hypervolume on the parent run; never at the study's expense
            from edge_search.dashboards.tracking import log_study_dashboards

            log_study_dashboards(self.study, self.tracker, self.parent_run_id)
        except Exception as err:
            log.warning("could not log the dashboards of study '%s' to MLflow: %s", self.name, err)
        self.tracker.finish_parent(self.parent_run_id, "FINISHED" if complete else "KILLED")


def _study_lease(storage: optuna.storages.BaseStorage, study_name: str) -> ExpiringLease:
    """The lease that serialises creating a study (and its MLflow parent run) on this machine."""
    url = getattr(storage, "url", repr(storage))
    return machine_lease("study", f"{url}|{study_name}", f"creating study '{study_name}'")
