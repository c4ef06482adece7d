"""The `Transform` seam: one deployment change to an ONNX model (quantise, prune, fp16)."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from edge_search.cache import ArtifactCache
from edge_search.config import DeployConfig
from edge_search.tasks.base import Task


class Transform(abc.ABC):
    """One change to an ONNX model; subclasses set `name` and implement `applies`, `apply` and `key_knobs`.

    How the pipeline uses transforms, once per trial (`Pipeline._transform`): `deploy_transforms`
    lists the registered transforms (`edge_search.transforms.TRANSFORMS`, in that order) whose
    `applies` is True for the trial's deploy knobs; each `apply` reads the previous step's model.
    The result is cached under a key made of the model's key, the applied transforms' names and
    every registered transform's `key_knobs`, so a transform owns its part of the cache key.
    Transforms hold no per-trial state: one object may serve many trials, and every process
    (a Ray worker) builds its own.
    """

    name: str
    """Short identifier, recorded with the trial and part of the transformed model's cache key."""
    key_extras: ClassVar[tuple[str, ...]] = ()
    """Names `key_knobs` may return besides deploy knobs (e.g. the version of a method the output
    depends on)."""

    def __init__(self, cache: ArtifactCache | None = None) -> None:
        """`cache`: where a transform keeps what it computes once per model and reuses across trials
        (the pipeline passes its own; None: nothing is kept beyond this process)."""
        self.cache = cache

    @abc.abstractmethod
    def applies(self, deploy: DeployConfig) -> bool:
        """True when these deploy knobs ask for this transform (checked before `apply`)."""

    @abc.abstractmethod
    def apply(self, src: Path, dst: Path, deploy: DeployConfig, task: Task) -> None:
        """Read the model at `src`, write the transformed model to `dst` (never modify `src`).

        `task` is the trial's task (`Task.bind_trial`): it supplies calibration data. Raises
        `InputError` when the task cannot give what the transform needs.
        """

    @abc.abstractmethod
    def key_knobs(self, deploy: DeployConfig) -> dict[str, Any]:
        """The deploy knobs that determine this transform's output, as `DeployConfig.model_dump`
        gives them: its part of the transformed model's cache key.

        Called for every registered transform, whether it applies or not (a knob of a transform
        that does not apply only makes a key more specific, never wrong; it keeps the keys of
        existing caches). Every knob `apply` reads must be here, or a cached model would be reused
        for knobs it was not made with.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
