"""The `Task` seam: train a model for given params, export it to ONNX, evaluate a deployable model."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    """A model family and its data. Subclasses set `name`, `version` and `train_knobs`."""

    name: str
    version: str
    """Bump when training or evaluation changes: it is part of every cache key."""
    train_knobs: Mapping[str, Any] = {}
    """Train knob names this task accepts, with their defaults."""
    can_train: bool = False
    """True when `prune` can rebuild and fine-tune the network (channel pruning, fine-tuning)."""
    supports_early_stop: bool = False
    """True when `train` accepts `on_epoch=` (multi-fidelity early stopping of dominated trials)."""
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
    def train(self, params: Mapping[str, Any], workdir: Path, seed: int) -> ModelArtifact:
        """Train (or load) the model for `params` and export it as `workdir/model.onnx`."""

    def prune(self, artifact: ModelArtifact, *, sparsity: float, channel_prune: float,
              finetune_epochs: int, params: Mapping[str, Any], workdir: Path, seed: int) -> ModelArtifact:
        """Prune in the training framework (structured channels really removed) and fine-tune."""
        raise NotImplementedError(f"task '{self.name}' cannot prune in its training framework")

    @abc.abstractmethod
    def evaluate(self, onnx_path: Path, batch_size: int = 1) -> dict[str, float]:
        """Quality of a deployable ONNX model on held-out data, run with ONNX Runtime."""

    @abc.abstractmethod
    def calibration_batches(self, n: int, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Up to `n` samples of training data as ONNX input feeds, for static quantisation."""

    @abc.abstractmethod
    def input_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for measuring at `batch_size`."""
