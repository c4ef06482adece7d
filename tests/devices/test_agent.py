"""`AgentDevice` passes the device contract against a real agent process on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_search.devices.agent import AgentDevice
from edge_search.devices.base import Device
from edge_search.devices.profile import get_profile
from edge_search.testing.contracts import DeviceContract
from tests.agent.conftest import AgentProcess, pool_profile, start_agents


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    """One real `edge-search agent serve` on a loopback port, killed after the module."""
    root = tmp_path_factory.mktemp("agent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_SEARCH_LOCK_DIR", str(root / "locks"))
        (process,) = start_agents(1, root, root / "token")
    try:
        yield process, root
    finally:
        process.kill()


class TestAgentDeviceContract(DeviceContract):
    @pytest.fixture()
    def device(self, agent: tuple[AgentProcess, Path]) -> Device:
        process, root = agent
        folder = root / "profiles"
        pool_profile(folder, [process.url], root / "token", name="contract-pool")
        return AgentDevice(get_profile("contract-pool", [folder]), heartbeat_s=60.0)
