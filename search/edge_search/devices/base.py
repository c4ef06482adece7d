"""The `Device` seam: one method, `measure`, that turns a model and session knobs into `LatencyStats`."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pydantic import Field

from edge_search.devices.stats import LatencyStats
from edge_search.schema import StrictModel

GraphOptimization = Literal["disable", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]


class SessionKnobs(StrictModel):
    """ONNX Runtime session options a deployment runs with; every field is set explicitly."""

    intra_op_threads: int = Field(1, ge=1)
    inter_op_threads: int = Field(1, ge=1)
    graph_optimization: GraphOptimization = "all"
    execution_mode: ExecutionMode = "sequential"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def key(self) -> str:
        """Stable text used in cache keys."""
        return self.model_dump_json()


class MeasureRequest(StrictModel):
    """What to measure: a model file, its session knobs, and input shapes (name -> shape)."""

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


@dataclass(frozen=True)
class NodeTiming:
    """Mean kernel time of one graph node, from ONNX Runtime's profiler on the device that ran it."""

    name: str
    op_type: str
    mean_us: float
    """Mean microseconds per execution of the node."""
    count: int
    """Executions recorded (normally the number of profiled runs)."""
    provider: str = ""
    """Execution provider that ran the node, e.g. ``CPUExecutionProvider``."""
    min_us: float | None = None
    """Fastest execution of the node over the profiled runs (None when the profiler did not report it).
    On a shared machine preemption only ever adds to a kernel's wall time, so this is the robust one."""


class Device(abc.ABC):
    """Where latency comes from: one method, `measure`. Implementations: `LocalDevice` (this machine),
    `AgentDevice` (boards running ``edge-search agent``), `EmulatedDevice` (a calibrated prediction);
    `edge_search.testing.FunctionDevice` for tests.

    Ownership: whoever creates a device (`create_device`) closes it, best as a context manager
    (``with create_device(profile) as device:``), once no measurement is in flight; closing twice
    is harmless. Threads: `measure` may be called from several threads at once; a device keeps
    measurements that must not overlap apart itself (a lease, a queue). Processes: every process
    builds its own device (a Ray worker does); a device object is never shared between processes.
    """

    name: str
    """The device profile's name; every `LatencyStats` it returns carries it as ``device``."""
    latency_source: Literal["measured", "emulated"] = "measured"
    """What its figures are, as every `LatencyStats` it returns says in ``source``."""

    @abc.abstractmethod
    def measure(self, request: MeasureRequest) -> LatencyStats:
        """Measure (or predict) the latency of `request`; called once per distinct (model, device,
        knobs) per study (the pipeline caches the result).

        Raises `InputError` for a request that cannot be measured here (a missing or unreadable
        model, more threads than the device allows, a provider it lacks) and `EdgeSearchError` when
        the device fails; the trial then fails with that reason.
        """

    def measure_round(self, requests: Sequence[MeasureRequest]) -> list[LatencyStats]:
        """One confirmation round (`edge_search.confirm`): every request measured once, in the order
        given, under conditions as alike as the device can make them; one `LatencyStats` per
        request, in that order.

        Optional: the default measures each request in turn with `measure`. `LocalDevice` runs the
        whole round in one fresh worker process.
        """
        return [self.measure(r) for r in requests]

    def profile_nodes(self, request: MeasureRequest, runs: int = 20) -> list[NodeTiming]:
        """Per-node kernel times (ONNX Runtime's profiler) over `runs` runs after warm-up, slowest first.

        Optional: devices that run models themselves provide it (`LocalDevice`); `EmulatedDevice`
        asks its host device for it. The default refuses.
        """
        raise NotImplementedError(f"device '{self.name}' cannot profile a model's nodes")

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Release workers, threads or connections; called by the device's owner when it is done."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
