"""The `Device` seam: one method, `measure`, that turns a model and session knobs into `LatencyStats`."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_search.devices.stats import LatencyStats

GraphOptimization = Literal["disable", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]


class SessionKnobs(BaseModel):
    """ONNX Runtime session options a deployment runs with; every field is set explicitly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intra_op_threads: int = Field(1, ge=1)
    inter_op_threads: int = Field(1, ge=1)
    graph_optimization: GraphOptimization = "all"
    execution_mode: ExecutionMode = "sequential"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def key(self) -> str:
        """Stable text used in cache keys."""
        return self.model_dump_json()


class MeasureRequest(BaseModel):
    """What to measure: a model file, its session knobs, and input shapes (name -> shape)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: Path
    session: SessionKnobs = SessionKnobs()
    shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    """Concrete shapes for inputs with dynamic dimensions; static inputs need no entry."""
    precision_target: float = 0.02
    """Stop when the CI of the median is within ± this fraction of the median."""
    max_time_s: float = 10.0
    """Time cap for the repetition phase (warm-up excluded)."""
    min_samples: int = 20
    max_samples: int = 100_000
    warmup_min_runs: int = 5
    warmup_min_s: float = 0.2
    priority: int = 10
    """Lower runs first where a device queues requests (a CI check goes before a search trial)."""


class Device(abc.ABC):
    """Where latency comes from. Implementations: `LocalDevice`, `AgentDevice`, `EmulatedDevice`."""

    name: str
    latency_source: Literal["measured", "emulated"] = "measured"

    @abc.abstractmethod
    def measure(self, request: MeasureRequest) -> LatencyStats:
        """Measure (or predict) latency; called once per distinct (model, device, knobs) per study."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers or connections; called when a study ends."""
