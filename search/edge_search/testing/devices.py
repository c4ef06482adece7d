"""`FunctionDevice`: the in-memory `Device` for tests, answering every measurement with a function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_search.devices.base import Device, MeasureRequest, NodeTiming
from edge_search.devices.stats import LatencySource, LatencyStats
from edge_search.errors import InputError

if TYPE_CHECKING:
    from edge_search.devices.profile import DeviceProfile

MeasureHandler = Callable[[MeasureRequest], LatencyStats]
"""Answers one measurement request."""
NodeHandler = Callable[[MeasureRequest, int], list[NodeTiming]]
"""Answers one per-node profiling request (`Device.profile_nodes`) for a number of runs."""


class FunctionDevice(Device):
    """A `Device` whose `measure` calls `handler(request)` (like `httpx.MockTransport`).

    It is a faithful double of the seam, not a shortcut around it: it refuses a request whose model
    file does not exist with an `InputError`, as every device does, records every request in
    `requests` (and every `profile_nodes` request in `profiled`), works as a context manager, and
    counts `close` calls. `nodes` answers `profile_nodes` (what `EmulatedDevice` asks its host);
    `profile` is the `DeviceProfile` it stands for, where a caller needs one.

        device = FunctionDevice(lambda r: LatencyStats.from_samples([1.0, 1.1, 0.9], device="fake"),
                                name="fake")
    """

    def __init__(self, handler: MeasureHandler, *, name: str = "function",
                 latency_source: LatencySource = "measured", nodes: NodeHandler | None = None,
                 profile: DeviceProfile | None = None) -> None:
        self.handler = handler
        self.name = name
        self.latency_source = latency_source
        self.nodes = nodes
        self.profile = profile
        self.requests: list[MeasureRequest] = []
        self.profiled: list[MeasureRequest] = []
        self.closed = 0
        """How many times `close` was called."""

    def _check(self, request: MeasureRequest) -> None:
        path = Path(request.model_path)
        if not path.is_file():
            raise InputError(f"{path}: no such model file")

    def measure(self, request: MeasureRequest) -> LatencyStats:
        """`handler(request)`, after the checks every device makes."""
        self._check(request)
        self.requests.append(request)
        return self.handler(request)

    def profile_nodes(self, request: MeasureRequest, runs: int = 20) -> list[NodeTiming]:
        """`nodes(request, runs)`; without `nodes`, this device cannot profile (like the base class)."""
        if self.nodes is None:
            return super().profile_nodes(request, runs)
        self._check(request)
        self.profiled.append(request)
        return self.nodes(request, runs)

    def close(self) -> None:
        self.closed += 1
