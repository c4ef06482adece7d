"""`Pipeline.evaluate(config) -> TrialResult`: the one path every driver (Optuna, Ray) takes.

train (cached by params) -> prune (cached) -> transforms (cached) -> evaluate the deployable
model with ONNX Runtime -> measure it on the device (cached by model bytes + device + knobs).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge_search.cache import ArtifactCache, content_key, file_sha256
from edge_search.config import DeployConfig, TrialConfig, check_deploy
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.capabilities import DeviceCapabilities, device_capabilities
from edge_search.devices.inputs import resolve_shapes, specs_from_onnx
from edge_search.devices.profile import DeviceProfile
from edge_search.devices.stats import LatencyStats
from edge_search.errors import EdgeSearchError, InputError, InvalidConfig
from edge_search.metrics import LATENCY_QUANTILES
from edge_search.space import Constraint
from edge_search.tasks.base import EpochCallback, ModelArtifact, Task, TrainingStopped

_T = TypeVar("_T")

STAGES = ("gate", "train", "prune", "transform", "evaluate", "measure")
GATED_METRICS = LATENCY_QUANTILES
"""Latency metrics the gate can decide from the untrained network (quantiles of the samples)."""


class StageFailed(EdgeSearchError):
    """A deterministic stage (train, prune, transform, evaluate) failed for this configuration.

    The same inputs fail the same way, so the failure is recorded in the artifact cache under the
    stage's key and raised again, without any work, for every later configuration that needs that
    entry (`cached` is then True). Drivers record it as an infeasible trial with its `cause`, so
    the sampler learns to avoid the region (a FAILED trial teaches a sampler nothing).
    """

    def __init__(self, stage: str, reason: str, *, cached: bool = False) -> None:
        super().__init__(f"{stage} failed: {reason}" + (" (recorded earlier; not built again)" if cached else ""))
        self.stage = stage
        self.reason = reason
        self.cached = cached

    @property
    def cause(self) -> str:
        """``stage ExceptionType``: what progress and the run summary count failures by."""
        return f"{self.stage} {self.reason.split(':', 1)[0]}".strip()


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, TimeoutError, KeyboardInterrupt)
"""Failures that say nothing about the configuration (a full disk, no memory, an interrupt): never
recorded as the configuration's failure."""


_NOT_THE_CONFIGURATIONS_FAULT: tuple[type[BaseException], ...] = (
    InputError, InvalidConfig, TrainingStopped, StageFailed, *TRANSIENT_ERRORS)


class GatedOut(InvalidConfig):
    """A trial stopped before training by the latency gate; recorded as pruned with the reason."""


class StoppedEarly(InvalidConfig):
    """A trial whose training was stopped as clearly dominated; recorded as pruned with the reason."""

    def __init__(self, reason: str, curve: dict[int, float]) -> None:
        super().__init__(reason)
        self.curve = curve


@dataclass
class EarlyStopRule:
    """Stop training a trial that is clearly dominated part-way through (multi-objective ASHA-style).

    At rung epochs (2, 4, 8, … below the trial's total), the trial is stopped when at least
    `min_dominators` finished trials were at least as fast (their measured median latency vs this
    trial's untrained-network latency from the gate) AND more accurate on validation at the same
    epoch by `margin`. Only trials that are dominated in both objectives are stopped, so a fast but
    less accurate configuration survives. `peers()` returns (validation curve, latency_ms) of
    finished trials; drivers wire it to their study.
    """

    peers: Callable[[], list[tuple[dict[int, float], float]]]
    margin: float = 0.02
    min_dominators: int = 2

    def callback(self, latency_ms: float) -> _EpochRecorder:
        return _EpochRecorder(lambda epoch, acc: not self.dominated(epoch, acc, latency_ms))

    def dominated(self, epoch: int, acc: float, latency_ms: float) -> bool:
        if epoch & (epoch - 1) or epoch < 2:  # rungs at powers of two
            return False
        better = [c for c, lat in self.peers()
                  if lat <= latency_ms and c.get(epoch, -1.0) >= acc + self.margin]
        return len(better) >= self.min_dominators


class _EpochRecorder:
    """Records the validation curve and asks an optional rule whether to go on."""

    def __init__(self, go_on: Callable[[int, float], bool] | None) -> None:
        self.curve: dict[int, float] = {}
        self.go_on = go_on

    def __call__(self, epoch: int, acc: float) -> bool:
        self.curve[epoch] = acc
        return True if self.go_on is None else self.go_on(epoch, acc)


def _read_curve(train_key: str, cache: ArtifactCache) -> dict[int, float]:
    p = cache.path("models", train_key) / "val_curve.json"
    if not p.exists():
        return {}
    return {int(k): float(v) for k, v in json.loads(p.read_text()).items()}


@dataclass
class TrialResult:
    """Everything one trial produced; `metrics` holds every objective a space may name."""

    metrics: dict[str, float]
    latency: LatencyStats
    deployable: Path
    timings: dict[str, float] = field(default_factory=dict)
    cache_hits: dict[str, bool] = field(default_factory=dict)
    infeasible: list[str] = field(default_factory=list)
    """Reasons this configuration cannot be deployed on the device (e.g. does not fit in memory)."""
    val_curve: dict[int, float] = field(default_factory=dict)
    """Validation accuracy after each training epoch (trainable tasks), for early stopping."""
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    """The concrete shape of every model input the latency was measured at (what export records)."""

    identity: str = ""
    """What the trial produced, as a key: the deployable model's bytes, the session knobs, batch and
    input resolution. Two trials with the same identity are the same configuration, however their
    knobs were written (`Pipeline.config_key` catches most of them before any work)."""

    @property
    def latency_source(self) -> str:
        return self.latency.source


def _model_size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


class Pipeline:
    """Evaluates trial configurations for one task on one device, caching every stage."""

    def __init__(self, task: Task, device: Device, profile: DeviceProfile, cache: ArtifactCache,
                 seed: int = 0, precision_target: float = 0.02, max_measure_s: float = 5.0,
                 constraints: Sequence[Constraint] = (), latency_gate: bool = False,
                 early_stop: EarlyStopRule | None = None) -> None:
        """`latency_gate`: before training, measure the untrained network with the trial's deploy
        knobs and skip training when a latency constraint is surely missed (see `GatedOut`)."""
        self.task = task
        self.latency_constraints = [c for c in constraints if c.metric in GATED_METRICS]
        self.latency_gate = latency_gate
        self.early_stop = early_stop
        self.device = device
        self.profile = profile
        self.cache = cache
        self.seed = seed
        self.precision_target = precision_target
        self.max_measure_s = max_measure_s

    @property
    def device_cores(self) -> int:
        from edge_search.devices import thread_cores

        return thread_cores(self.profile)

    @functools.cached_property
    def capabilities(self) -> DeviceCapabilities:
        """The device's execution providers and the precisions of each (asked once)."""
        return device_capabilities(self.profile)

    def check(self, config: TrialConfig) -> None:
        """Reject a configuration that cannot be deployed, before any work is spent on it."""
        check_deploy(config.deploy, device_cores=self.device_cores,
                     device_precisions=tuple(self.profile.precisions),
                     task_can_prune_channels=self.task.can_train, task_can_finetune=self.task.can_train,
                     task_can_resize_inputs=self.task.supports_input_resolution,
                     capabilities=self.capabilities)

    def config_key(self, config: TrialConfig) -> str:
        """The identity of a configuration before it is built: its resolved train params, the
        transforms that apply with their `key_knobs`, the pruning done in the task, the session
        knobs, batch size and input resolution. Knobs that change nothing for this configuration
        (calibration knobs of an fp32 model, fine-tune epochs of an unpruned one) are not part of
        it, so proposals that differ only in those are one configuration."""
        from edge_search.transforms import deploy_transforms

        deploy = config.deploy
        chain = deploy_transforms(deploy, task_prunes=self.task.can_train)
        knobs: dict[str, Any] = {}
        for t in chain:
            knobs.update(t.key_knobs(deploy))
        pruned_in_task = (deploy.sparsity, deploy.channel_prune, deploy.finetune_epochs) if (
            deploy.pruned and self.task.can_train) else None
        return content_key("config", self.task.name, self.task.version, self.task.resolve_params(config.train),
                           [t.name for t in chain], knobs, pruned_in_task, deploy.session().key(),
                           deploy.batch_size, deploy.input_resolution)

    def _guarded(self, stage: str, kind: str, key: str, build: Callable[[], _T]) -> _T:
        """Run a deterministic stage, recording its failure under (`kind`, `key`) in the cache and
        raising a recorded failure again without building (see `StageFailed`)."""
        known = self.cache.failure(kind, key)
        if known is not None:
            raise StageFailed(str(known.get("stage", stage)), str(known.get("reason", "failed")), cached=True)
        try:
            return build()
        except _NOT_THE_CONFIGURATIONS_FAULT:
            raise
        except Exception as err:
            text = str(err).splitlines()[0] if str(err) else ""
            reason = f"{type(err).__name__}: {text}"[:500]
            self.cache.record_failure(kind, key, {"stage": stage, "reason": reason, "at": time.time()})
            raise StageFailed(stage, reason) from err

    def evaluate(self, config: TrialConfig) -> TrialResult:
        self.check(config)
        timings = dict.fromkeys(STAGES, 0.0)
        hits: dict[str, bool] = {}
        params = self.task.resolve_params(config.train)
        deploy = config.deploy
        gate_latency: LatencyStats | None = None
        wants_gate = (self.latency_gate and self.latency_constraints) or (
            self.early_stop is not None and self.task.supports_early_stop)
        if wants_gate and "epochs" in params:
            with _timed(timings, "gate"):
                gate_latency = self._gate(params, deploy)

        on_epoch = None
        if self.early_stop is not None and gate_latency is not None:
            on_epoch = self.early_stop.callback(gate_latency.median_ms)
        with _timed(timings, "train"):
            try:
                base_key, model, hits["train"] = self._train(params, on_epoch)
            except TrainingStopped as stop:
                gate_ms = gate_latency.median_ms if gate_latency is not None else float("nan")
                raise StoppedEarly(f"early stop: dominated at epoch {stop.epoch} (validation accuracy "
                                   f"{stop.val_accuracy:.4f}, untrained latency {gate_ms:.4g} ms) "
                                   f"by {self.early_stop.min_dominators if self.early_stop else 0}+ finished "
                                   "trials that were at least as fast and more accurate at that epoch",
                                   on_epoch.curve if isinstance(on_epoch, _EpochRecorder) else {}) from None
        val_curve = _read_curve(base_key, self.cache)
        task = self._trial_task(model, params, deploy)
        with _timed(timings, "prune"):
            model_key, model, prune_hit = self._prune(base_key, model, params, deploy)
            if prune_hit is not None:
                hits["prune"] = prune_hit
        with _timed(timings, "transform"):
            deploy_dir, hits["transform"] = self._transform(model_key, model, deploy, task)
        deployable = deploy_dir / "model.onnx"
        with _timed(timings, "evaluate"):
            quality, hits["evaluate"] = self._evaluate(deploy_dir, deploy, task)
        with _timed(timings, "measure"):
            latency, hits["measure"] = self._measure(deployable, deploy, task)
            input_shapes = measured_shapes(deployable, task.input_shapes(deploy.batch_size))

        metrics: dict[str, float] = {**quality, **latency.summary(), "size_mb": _model_size_mb(deployable)}
        identity = content_key("result", file_sha256(deployable), deploy.session().key(), deploy.batch_size,
                               deploy.input_resolution, task.version)
        infeasible: list[str] = []
        # One check for every device: the emulator's `fits_memory` flag is this same comparison.
        if latency.peak_memory_mb > self.profile.usable_memory_mb:
            infeasible.append(f"peak memory {latency.peak_memory_mb:.0f} MB exceeds the device's "
                              f"{self.profile.usable_memory_mb:.0f} MB usable RAM")
        return TrialResult(metrics=metrics, latency=latency, deployable=deployable, timings=timings,
                           cache_hits=hits, infeasible=infeasible, val_curve=val_curve, input_shapes=input_shapes,
                           identity=identity)

    # -- stages -------------------------------------------------------------------------------

    def _gate(self, params: dict[str, Any], deploy: DeployConfig) -> LatencyStats:
        """Measure the same architecture untrained (epochs=0, no fine-tuning): latency depends on the
        architecture and deploy knobs, not on trained weights. Raise `GatedOut` when the whole
        confidence interval (or the tail percentile) already misses a latency constraint."""
        untrained = {**params, "epochs": 0}
        key, model, _ = self._train(untrained)
        gate_deploy = deploy.model_copy(update={"finetune_epochs": 0})
        key, model, _ = self._prune(key, model, untrained, gate_deploy)
        deploy_dir, _ = self._transform(key, model, gate_deploy)
        stats, _ = self._measure(deploy_dir / "model.onnx", gate_deploy)
        summary = stats.summary()
        for c in self.latency_constraints:
            value = stats.ci_low_ms if c.metric == "latency_ms" else summary[c.metric]
            if not c.satisfied(value):
                raise GatedOut(f"latency gate: the untrained network measures {c.metric} "
                               f"{summary[c.metric]:.4g} ms (CI low {stats.ci_low_ms:.4g}), "
                               f"constraint {c}; not trained")
        return stats

    def _trial_task(self, model: ModelArtifact, params: dict[str, Any], deploy: DeployConfig) -> Task:
        """The task as this trial uses it (`Task.bind_trial`)."""
        return self.task.bind_trial(model, params, deploy)

    def _train(self, params: dict[str, Any], on_epoch: EpochCallback | None = None,
               ) -> tuple[str, ModelArtifact, bool]:
        key = content_key("train", self.task.name, self.task.version, params, self.seed)

        def build(tmp: Path) -> None:
            if self.task.supports_early_stop:
                recorder = on_epoch if isinstance(on_epoch, _EpochRecorder) else _EpochRecorder(None)
                art = self.task.train(params, tmp, self.seed, on_epoch=recorder)
                (tmp / "val_curve.json").write_text(json.dumps(recorder.curve))
            else:
                art = self.task.train(params, tmp, self.seed)
            _normalise_artifact(art, tmp)

        folder, hit = self._guarded("train", "models", key, lambda: self.cache.entry("models", key, build))
        return key, _artifact_in(folder), hit

    def _prune(self, base_key: str, model: ModelArtifact, params: dict[str, Any],
               deploy: DeployConfig) -> tuple[str, ModelArtifact, bool | None]:
        if not deploy.pruned:
            return base_key, model, None
        if not self.task.can_train:
            return base_key, model, None  # pruned on the ONNX graph by the transform chain
        key = content_key("prune", base_key, deploy.sparsity, deploy.channel_prune, deploy.finetune_epochs)

        def build(tmp: Path) -> None:
            out = self.task.prune(model, sparsity=deploy.sparsity, channel_prune=deploy.channel_prune,
                                  finetune_epochs=deploy.finetune_epochs, params=params, workdir=tmp,
                                  seed=self.seed)
            _normalise_artifact(out, tmp)

        folder, hit = self._guarded("prune", "models", key, lambda: self.cache.entry("models", key, build))
        return key, _artifact_in(folder), hit

    def _transform(self, model_key: str, model: ModelArtifact, deploy: DeployConfig,
                   task: Task | None = None) -> tuple[Path, bool]:
        from edge_search.transforms import deploy_key_knobs, deploy_transforms

        trial_task = task or self.task

        chain = deploy_transforms(deploy, task_prunes=self.task.can_train, cache=self.cache)
        key = content_key("deploy", model_key, [t.name for t in chain], deploy_key_knobs(deploy))

        def build(tmp: Path) -> None:
            src = model.onnx_path
            for i, transform in enumerate(chain):
                dst = tmp / f"step{i}-{transform.name}.onnx"
                transform.apply(src, dst, deploy, trial_task)
                src = dst
            shutil.copyfile(src, tmp / "model.onnx")
            for p in tmp.glob("step*.onnx"):
                p.unlink()

        return self._guarded("transform", "deploy", key, lambda: self.cache.entry("deploy", key, build))

    def _evaluate(self, deploy_dir: Path, deploy: DeployConfig,
                  task: Task | None = None) -> tuple[dict[str, float], bool]:
        trial_task = task or self.task  # a bound task's version covers its data (e.g. a builder's eval set)
        key = content_key("evaluate", file_sha256(deploy_dir / "model.onnx"), self.task.name,
                          trial_task.version, deploy.batch_size, deploy.input_resolution)
        cached = self.cache.read_json("evaluations", key)
        if cached is not None:
            return {k: float(v) for k, v in cached.items()}, True
        quality = self._guarded("evaluate", "evaluations", key,
                                lambda: trial_task.evaluate(deploy_dir / "model.onnx", deploy.batch_size))
        self.cache.write_json("evaluations", key, quality)
        return quality, False

    def _measure(self, deployable: Path, deploy: DeployConfig,
                 task: Task | None = None) -> tuple[LatencyStats, bool]:
        session = deploy.session()
        shapes = (task or self.task).input_shapes(deploy.batch_size)
        key = content_key("measure", file_sha256(deployable), self.profile.name, self.profile.version,
                          session.key(), shapes, self.precision_target)
        cached = self.cache.read_json("measurements", key)
        if cached is not None:
            return LatencyStats.model_validate(cached), True
        request = MeasureRequest(model_path=deployable, session=session, shapes=shapes,
                                 precision_target=self.precision_target, max_time_s=self.max_measure_s)
        stats = self.device.measure(request)
        self.cache.write_json("measurements", key, stats.model_dump(mode="json"))
        return stats, False


def measured_shapes(model: Path, shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Every input of `model` with the concrete shape a measurement with `shapes` feeds it (the
    declared static shape where `shapes` has no entry)."""
    return {name: list(shape) for name, shape in resolve_shapes(specs_from_onnx(model), shapes).items()}


def _normalise_artifact(artifact: ModelArtifact, folder: Path) -> None:
    """Store a task's output under the cache's fixed names (model.onnx, model.pt)."""
    if artifact.onnx_path != folder / "model.onnx":
        shutil.move(artifact.onnx_path, folder / "model.onnx")
    if artifact.checkpoint_path is not None and artifact.checkpoint_path != folder / "model.pt":
        shutil.move(artifact.checkpoint_path, folder / "model.pt")


def _artifact_in(folder: Path) -> ModelArtifact:
    ckpt = folder / "model.pt"
    return ModelArtifact(onnx_path=folder / "model.onnx", checkpoint_path=ckpt if ckpt.exists() else None)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] += time.perf_counter() - t0
