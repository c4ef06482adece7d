"""The `Task` seam: train a model for given params, export it to ONNX, evaluate a deployable model."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge_search.config import DeployConfig

EpochCallback = Callable[[int, float], bool]
"""Called after each training epoch with (epoch, validation accuracy); False stops training."""


class TrainingStopped(Exception):
    """Raised by a task's `train` when its `on_epoch` callback asked it to stop."""

    def __init__(self, epoch: int, val_accuracy: float) -> None:
        super().__init__(f"stopped after epoch {epoch} (validation accuracy {val_accuracy:.4f})")
        self.epoch = epoch
        self.val_accuracy = val_accuracy


@dataclass(frozen=True)
class ModelArtifact:
    """A trained (or pruned) model on disk: its ONNX export and, for trainable tasks, a checkpoint."""

    onnx_path: Path
    checkpoint_path: Path | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Training-side metrics (e.g. validation accuracy); never used as the trial's accuracy."""


class Task(abc.ABC):
    """A model family and its data: what the pipeline trains, transforms, evaluates and measures.

    Subclasses set `name`, `version` and `train_knobs` and implement `train`, `evaluate`,
    `calibration_batches` and `input_shapes`. The other methods are optional hooks whose defaults
    are documented no-ops (or refusals, for `prune`); a task overrides them when it can do more.

    How the pipeline calls a task, once per trial: `resolve_params` on the sampled train knobs;
    `train` (skipped on a cache hit); `prune` when the trial asks for pruning and `can_train`;
    `bind_trial` with the trained model and the deploy knobs; then, on the task `bind_trial`
    returned, the transforms' `calibration_batches`, `evaluate` and `input_shapes`. A task object is
    used by one process at a time; a Ray worker builds its own.
    """

    name: str
    """Registry name (`edge_search.tasks.TASKS`); part of every cache key."""
    version: str
    """Bump when training or evaluation changes: it is part of every cache key. Tasks over a
    user's files fold the files' content hashes into it."""
    train_knobs: Mapping[str, Any] = {}
    """Train knob names this task accepts, with their defaults."""
    can_train: bool = False
    """True when `prune` can rebuild and fine-tune the network (channel pruning, fine-tuning)."""
    supports_early_stop: bool = False
    """True when `train` calls `on_epoch` after every epoch (multi-fidelity early stopping of
    dominated trials); the pipeline then passes one, and records the validation curve."""
    supports_input_resolution: bool = False
    """True when the task can resize its inputs to the `input_resolution` deploy knob (in
    `bind_trial`); configurations that set it are rejected for other tasks."""
    primary_metric: str = "accuracy"
    """Name of the quality metric `evaluate` returns (`accuracy` or `fidelity`)."""

    def resolve_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults; unknown names are an error (called once a trial's params are sampled)."""
        unknown = set(params) - set(self.train_knobs)
        if unknown:
            raise KeyError(f"unknown train knob(s) {sorted(unknown)} for task '{self.name}' "
                           f"(known: {', '.join(self.train_knobs)})")
        return {**self.train_knobs, **params}

    @abc.abstractmethod
    def train(self, params: Mapping[str, Any], workdir: Path, seed: int,
              on_epoch: EpochCallback | None = None) -> ModelArtifact:
        """Train (or load) the model for `params` and export it as `workdir/model.onnx`.

        Called on a cache miss, in a fresh `workdir`. `on_epoch(epoch, val_accuracy)` is passed
        only to tasks with `supports_early_stop`: they call it after each epoch and raise
        `TrainingStopped` when it returns False. Other tasks ignore it.
        """

    def prune(self, artifact: ModelArtifact, *, sparsity: float, channel_prune: float,
              finetune_epochs: int, params: Mapping[str, Any], workdir: Path, seed: int) -> ModelArtifact:
        """Prune in the training framework (structured channels really removed) and fine-tune.

        Called only for tasks with `can_train`, when the trial asks for pruning; the default
        refuses. Tasks that cannot prune leave it to the ONNX `MagnitudePruneTransform`.
        """
        raise NotImplementedError(f"task '{self.name}' cannot prune in its training framework")

    def bind_trial(self, artifact: ModelArtifact, params: Mapping[str, Any], deploy: DeployConfig) -> Task:
        """This task as one trial uses it, once its model is trained; the default is the task itself.

        Called by the pipeline after training and pruning, before the transforms. Tasks whose data
        depends on the trained model or on the deploy knobs (the input resolution, data a builder
        returned) return a copy bound to them; the copy's `version` must cover that data. Raises
        `InvalidConfig` when the model cannot be deployed with `deploy` (e.g. a fixed batch size).
        """
        return self

    @abc.abstractmethod
    def evaluate(self, onnx_path: Path, batch_size: int = 1) -> dict[str, float]:
        """Quality of a deployable ONNX model on held-out data, run with ONNX Runtime."""

    @abc.abstractmethod
    def calibration_batches(self, n: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Up to `n` samples of training data as ONNX input feeds, for static quantisation."""

    @abc.abstractmethod
    def input_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for measuring at `batch_size`."""
