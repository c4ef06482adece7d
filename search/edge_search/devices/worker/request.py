"""`WorkerRequest`: what `LocalDevice` sends a worker process (as JSON), and the worker's failure kinds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_search.devices.base import MeasureRequest
from edge_search.schema import StrictModel


class WorkerRequest(StrictModel):
    """Everything one worker run needs; `LocalDevice` builds it, the worker reads it as JSON."""

    mode: Literal["measure", "profile", "rounds"] = "measure"
    device: str
    request: MeasureRequest
    batch: tuple[MeasureRequest, ...] = ()
    """``mode: rounds``: the requests to measure one after the other in this process (`request` is
    then the first of them)."""
    cores: tuple[int, ...] = Field(min_length=1)
    """CPU cores the worker pins itself to."""
    allow_spinning: bool = True
    seed: int = 0
    """Seed of the random input data."""
    warmup_max_s: float = Field(default=2.0, gt=0)
    warmup_drift: float = Field(default=0.02, gt=0)
    """Warm-up is steady when a window's median is within this fraction of the previous window's."""
    min_measure_s: float = Field(default=0.5, ge=0)
    """Shortest repetition phase: samples spread over at least this long are less exposed to one
    burst of background noise than a handful taken in a few milliseconds (time cap permitting)."""
    nice: int | None = Field(default=-10, ge=-20, le=19)
    """Scheduling niceness the worker asks for before it starts ONNX Runtime's threads (None: leave as
    inherited). A negative value needs root or CAP_SYS_NICE; without it the worker keeps what it
    inherited. On shared cores, background work (a training process, a test run) then yields to the
    measurement instead of time-slicing with it. The value in effect is recorded in ``extra.nice``."""
    autogroup: bool = True
    """Also start a session of its own and give its autogroup the niceness `nice` (see
    `engine.set_priority`); False keeps the caller's autogroup, as the engine did before issue 14."""
    profile_runs: int = Field(default=20, ge=1)
    """Runs recorded by ORT's profiler in ``mode: profile`` (after warm-up)."""


class WorkerFailure(Exception):
    """An error to report on the result line, with its kind (``input`` means the user's fault)."""

    def __init__(self, kind: Literal["input", "runtime"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


def one_line(text: str, limit: int = 400) -> str:
    """Collapse whitespace (ORT messages span lines) and cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
