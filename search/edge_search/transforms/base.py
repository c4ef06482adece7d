"""The `Transform` seam: one deployment change to an ONNX model (quantise, prune, fp16)."""

from __future__ import annotations

import abc
from pathlib import Path

from edge_search.config import DeployConfig
from edge_search.tasks.base import Task


class Transform(abc.ABC):
    """One change to an ONNX model; subclasses set `name` and implement `applies` and `apply`."""

    name: str
    """Short identifier, recorded with the trial and part of the transformed model's cache key."""

    @abc.abstractmethod
    def applies(self, deploy: DeployConfig) -> bool:
        """True when these deploy knobs ask for this transform (checked before `apply`)."""

    @abc.abstractmethod
    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Read the model at `src`, write the transformed model to `dst` (never modify `src`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
