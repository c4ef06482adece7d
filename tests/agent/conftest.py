"""Agent test helpers: an in-process app, ONNX models the agent must refuse, real agent processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from onnx import TensorProto, helper

from edge_search.testing.chaos import free_port, write_pool_profile
from tests.devices.tiny_conv import tiny_conv

TOKEN = "test-token-0123456789abcdef"


def sha(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def auth(token: str = TOKEN) -> dict[str, str]:
    """The Authorization header for `token`."""
    return {"Authorization": f"Bearer {token}"}


def external_data_model() -> bytes:
    """A model whose weight lives in a file the client names (/etc/passwd): must be refused."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def custom_op_model() -> bytes:
    """A model with a node in a custom op domain (would need a custom-op library): must be refused."""
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.example.custom")
    graph = helper.make_graph([node], "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.custom", 1)])
    return model.SerializeToString()


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    """A small valid conv net (a few KB)."""
    return tiny_conv(tmp_path / "tiny.onnx", size=16, channels=8)


@dataclass
class AgentProcess:
    """A real `edge-search agent serve` process on 127.0.0.1 (its own process group)."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def health(self, timeout: float = 2.0) -> dict[str, object]:
        """GET /health (raises when it does not answer)."""
        r = httpx.get(f"{self.url}/health", headers=auth(), timeout=timeout)
        r.raise_for_status()
        data: dict[str, object] = r.json()
        return data

    def kill(self) -> None:
        """SIGKILL the agent and its measurement worker (the process group this test started)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def start_agents(n: int, root: Path, token_file: Path, timeout_s: float = 60.0) -> list[AgentProcess]:
    """Start `n` agents on free loopback ports and wait until each answers its heartbeat."""
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    agents = []
    for i in range(n):
        port = free_port()
        log = root / f"agent{i}.log"
        cmd = [sys.executable, "-m", "edge_search", "agent", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--token-file", str(token_file), "--profile", "host", "--cache", str(root / f"cache{i}"),
               "--max-measure-time", "30"]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        agents.append(AgentProcess(f"http://127.0.0.1:{port}", proc, log))
    deadline = time.monotonic() + timeout_s
    try:
        for a in agents:
            while True:
                if a.proc.poll() is not None:
                    raise RuntimeError(f"agent exited: {a.log.read_text()[-2000:]}")
                try:
                    a.health(timeout=1.0)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"agent did not start: {a.log.read_text()[-2000:]}") from None
                    time.sleep(0.2)
    except BaseException:
        for a in agents:
            a.kill()
        raise
    return agents


@pytest.fixture()
def agent_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[AgentProcess]]:
    """Two real agents on 127.0.0.1, stopped (SIGKILL) after the test whatever happens."""
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    agents = start_agents(2, tmp_path, tmp_path / "token")
    try:
        yield agents
    finally:
        for a in agents:
            a.kill()


def pool_profile(folder: Path, urls: list[str], token_file: Path, name: str = "pool-test") -> Path:
    """A device profile YAML for an agent pool (the host's CPU description, method agent)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_pool_profile(folder / f"{name}.yaml", urls, token_file, "two agents on loopback (test)")


__all__ = ["TOKEN", "AgentProcess", "auth", "custom_op_model", "external_data_model", "pool_profile",
           "sha", "start_agents"]
