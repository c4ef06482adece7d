"""The agent's wire format: request and response bodies shared by the server and `AgentDevice`.

Endpoints (every one needs ``Authorization: Bearer <token>``):

- ``GET /health``: `AgentHealth` (the heartbeat: state, queue length, board state).
- ``GET|HEAD /models/{sha256}``: 200 with `ModelInfo` when the model is cached, else 404.
- ``PUT /models/{sha256}``: the raw ONNX bytes (``application/octet-stream``); 201 stored, 200
  already cached, 400 digest mismatch, 408 upload too slow, 413 too large, 422 refused model.
- ``POST /measure``: `RemoteMeasureRequest` -> `MeasureResponse`; 404 model not cached, 422 bad
  request, 503 busy for longer than ``queue_timeout_s``.
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from edge_search.devices.base import SessionKnobs
from edge_search.devices.stats import LatencyStats
from edge_search.schema import StrictModel

PROTOCOL_VERSION = 1
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_INPUTS = 64
MAX_DIMS = 8
MAX_DIM = 1 << 16
MAX_ELEMENTS = 1 << 26
"""Most elements one input tensor may have (a 256 MB float32 tensor): bounds the board's memory."""


class RemoteMeasureRequest(StrictModel):
    """A `MeasureRequest` over the wire: the model by digest (uploaded before), bounded fields."""

    model_sha256: str = Field(pattern=SHA256_PATTERN)
    session: SessionKnobs = SessionKnobs()
    shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict, max_length=MAX_INPUTS)
    precision_target: float = Field(0.02, gt=0, le=1)
    max_time_s: float = Field(10.0, gt=0, le=600)
    min_samples: int = Field(20, ge=1, le=1_000_000)
    max_samples: int = Field(100_000, ge=1, le=10_000_000)
    warmup_min_runs: int = Field(5, ge=0, le=100_000)
    warmup_min_s: float = Field(0.2, ge=0, le=60)
    priority: int = Field(10, ge=-1_000_000, le=1_000_000)
    """Lower goes first in the agent's queue (a CI check before a search trial)."""
    queue_timeout_s: float = Field(60.0, ge=0, le=3600)
    """Most seconds to wait for the board while another client measures; 503 after that."""

    @field_validator("shapes")
    @classmethod
    def _bounded_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        for name, shape in shapes.items():
            if not 0 < len(name) <= 256:
                raise ValueError("input names must have 1 to 256 characters")
            if len(shape) > MAX_DIMS or any(not 1 <= d <= MAX_DIM for d in shape):
                raise ValueError(f"shape of '{name}': at most {MAX_DIMS} dimensions of 1..{MAX_DIM}")
            if math.prod(shape) > MAX_ELEMENTS:
                raise ValueError(f"shape of '{name}': more than {MAX_ELEMENTS} elements")
        return shapes

    @field_validator("session")
    @classmethod
    def _bounded_session(cls, session: SessionKnobs) -> SessionKnobs:
        if session.intra_op_threads > 1024 or session.inter_op_threads > 1024:
            raise ValueError("thread counts above 1024 are not accepted")
        if len(session.providers) > 8 or any(not 0 < len(p) <= 64 for p in session.providers):
            raise ValueError("at most 8 execution providers, each named in 1 to 64 characters")
        return session


class BoardState(StrictModel):
    """What the board looks like right now; fields the OS does not expose are None or empty."""

    temperatures_c: dict[str, float] = Field(default_factory=dict)
    """Thermal zone type -> degrees Celsius (``/sys/class/thermal``)."""
    throttled: bool | None = None
    """True when the board reports throttling (Raspberry Pi firmware flags, or a thermal zone at or
    above its passive trip point); None when nothing on this OS tells."""
    throttle_source: str = ""
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cpu_percent: float = 0.0
    cpu_freq_mhz: float | None = None
    memory_total_mb: float = 0.0
    memory_available_mb: float = 0.0


class AgentHealth(StrictModel):
    """The heartbeat answer: who the agent is, whether it is measuring, and its queue."""

    status: str = "ok"
    protocol: int = PROTOCOL_VERSION
    version: str = ""
    device: str
    """Name of the agent's local device profile."""
    cores: tuple[int, ...] = ()
    busy: bool = False
    queue_length: int = 0
    """Measurements running or waiting on this agent."""
    measurements: int = 0
    uploads: int = 0
    cached_models: int = 0
    max_model_bytes: int = 0
    max_measure_time_s: float = 0.0
    uptime_s: float = 0.0
    server_time: float = 0.0
    last_measurement_at: float | None = None
    board: BoardState = Field(default_factory=BoardState)


class ModelInfo(StrictModel):
    """A model in the agent's cache."""

    sha256: str
    size_bytes: int
    created: bool = False
    """True when this request stored it; False when it was already cached."""


class MeasureResponse(StrictModel):
    """One measurement on the board, with the board's state right after it."""

    stats: LatencyStats
    board: BoardState
    queue_wait_s: float = 0.0
    agent_device: str = ""


class ErrorBody(StrictModel):
    """Every error answer: ``{"detail": "one line"}`` (FastAPI's shape)."""

    detail: str
