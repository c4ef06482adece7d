"""The agent's HTTP service in-process: authentication, limits, refused models, the cache, a measurement."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge_search.agent.board import read_temperatures, read_throttled
from edge_search.agent.fairqueue import SlotQueue
from edge_search.agent.security import ModelRejected, check_model, ensure_token, tokens_match
from edge_search.agent.server import AgentConfig, create_app, local_profile
from edge_search.devices.profile import get_profile
from tests.agent.conftest import TOKEN, auth, custom_op_model, external_data_model, sha

MAX_MODEL = 64 * 1024


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The agent app (host profile, 64 KB model limit) behind an in-process client."""
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    config = AgentConfig(token=TOKEN, profile=local_profile(get_profile("host")), cache_dir=tmp_path / "models",
                         max_model_bytes=MAX_MODEL, max_measure_time_s=5.0, warmup_max_s=0.3,
                         min_measure_s=0.1, openapi=True)
    with TestClient(create_app(config)) as c:
        yield c


def test_every_endpoint_needs_the_token(client: TestClient) -> None:
    digest = "0" * 64
    calls = [("GET", "/health", None), ("GET", f"/models/{digest}", None), ("HEAD", f"/models/{digest}", None),
             ("PUT", f"/models/{digest}", b"x"), ("POST", "/measure", b"{}")]
    for method, url, body in calls:
        for headers in ({}, auth("wrong-token-0123456789"), {"Authorization": f"Basic {TOKEN}"}):
            r = client.request(method, url, content=body, headers=headers)
            assert r.status_code == 401, (method, url, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/health", headers=auth()).status_code == 200


def test_health_reports_state_queue_and_board(client: TestClient) -> None:
    h = client.get("/health", headers=auth()).json()
    assert h["status"] == "ok" and h["device"] == "host" and h["busy"] is False and h["queue_length"] == 0
    assert h["max_model_bytes"] == MAX_MODEL and h["cached_models"] == 0
    board = h["board"]
    assert board["memory_total_mb"] > 0 and len(board["load_avg"]) == 3
    assert "throttled" in board and isinstance(board["temperatures_c"], dict)


def test_oversized_uploads_are_413(client: TestClient) -> None:
    big = b"\0" * (MAX_MODEL + 1)
    r = client.put(f"/models/{sha(big)}", content=big, headers=auth())
    assert r.status_code == 413 and "larger" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(20):
            yield b"\0" * 8192

    r = client.put(f"/models/{sha(b'')}", content=chunks(), headers=auth())
    assert r.status_code == 413
    r = client.post("/measure", content=b"{" + b" " * (2 << 20) + b"}",
                    headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize(("body", "reason"), [
    (external_data_model(), "external data"),
    (custom_op_model(), "custom op domain 'com.example.custom'"),
    (b"definitely not protobuf \xff\xff\xff", "not an ONNX model"),
])
def test_unsafe_or_broken_models_are_422(client: TestClient, body: bytes, reason: str) -> None:
    r = client.put(f"/models/{sha(body)}", content=body, headers=auth())
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]
    assert client.head(f"/models/{sha(body)}", headers=auth()).status_code == 404


def test_digest_mismatch_and_bad_digest(client: TestClient, tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    assert client.put(f"/models/{'a' * 64}", content=data, headers=auth()).status_code == 400
    for bad in ("../../etc/passwd", "A" * 64, "abc", "%2e%2e%2fetc%2fpasswd"):
        assert client.get(f"/models/{bad}", headers=auth()).status_code in (404, 422)


def test_upload_once_then_measure(client: TestClient, tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    digest = sha(data)
    body = {"model_sha256": digest, "precision_target": 0.05, "max_time_s": 0.5}
    assert client.post("/measure", json=body, headers=auth()).status_code == 404  # not cached yet
    r = client.put(f"/models/{digest}", content=data, headers=auth())
    assert r.status_code == 201 and r.json() == {"sha256": digest, "size_bytes": len(data), "created": True}
    assert client.head(f"/models/{digest}", headers=auth()).status_code == 200
    r = client.put(f"/models/{digest}", content=data, headers=auth())
    assert r.status_code == 200 and r.json()["created"] is False

    r = client.post("/measure", json=body, headers=auth())
    assert r.status_code == 200, r.text
    answer = r.json()
    stats = answer["stats"]
    assert stats["median_ms"] > 0 and stats["samples_ms"] and stats["device"] == "host"
    assert stats["extra"]["model_sha256"] == digest and "model_path" not in stats["extra"]
    assert answer["board"]["memory_total_mb"] > 0 and answer["agent_device"] == "host"
    h = client.get("/health", headers=auth()).json()
    assert h["measurements"] == 1 and h["uploads"] == 1 and h["cached_models"] == 1
    assert h["last_measurement_at"] is not None


def test_measure_requests_are_validated(client: TestClient, tiny_model: Path) -> None:
    data = tiny_model.read_bytes()
    digest = sha(data)
    client.put(f"/models/{digest}", content=data, headers=auth())
    bad = [
        {"model_sha256": digest, "model_path": "/etc/passwd"},  # no endpoint takes a path
        {"model_sha256": digest, "max_time_s": 6.0},  # over this agent's limit
        {"model_sha256": digest, "session": {"intra_op_threads": 64}},  # more threads than cores
        {"model_sha256": digest, "shapes": {"x": [1 << 20, 1 << 20]}},
        {"model_sha256": digest, "session": {"providers": ["CUDAExecutionProvider"]}},
        {"model_sha256": "nothex"},
    ]
    for body in bad:
        r = client.post("/measure", json=body, headers=auth())
        assert r.status_code == 422, (body, r.text)


def test_model_checks() -> None:
    with pytest.raises(ModelRejected, match="external data"):
        check_model(external_data_model())
    with pytest.raises(ModelRejected, match="custom op"):
        check_model(custom_op_model())
    assert tokens_match(TOKEN, TOKEN) and not tokens_match("x", TOKEN) and not tokens_match("", "")


def test_token_file_is_created_private(tmp_path: Path) -> None:
    token, created = ensure_token(tmp_path / "t")
    assert created and len(token) >= 32 and (tmp_path / "t").stat().st_mode & 0o077 == 0
    assert ensure_token(tmp_path / "t") == (token, False)


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `condition()` holds (a state change of another thread), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_slot_queue_serves_lower_priority_first() -> None:
    q: SlotQueue[str] = SlotQueue(["board"])
    assert q.acquire(10) == "board"
    order: list[str] = []

    def wait(label: str, priority: int) -> None:
        slot = q.acquire(priority, timeout=10)
        assert slot == "board"
        order.append(label)
        q.release(slot)

    threads = []
    for label, p in (("trial-a", 10), ("trial-b", 10), ("ci", 0), ("between", 5)):
        t = threading.Thread(target=wait, args=(label, p))
        t.start()
        threads.append(t)
        _until(lambda: q.waiting == len(threads))  # queued before the next one arrives
    q.release("board")
    for t in threads:
        t.join(10)
    # by priority; equal priorities first come, first served
    assert order == ["ci", "between", "trial-a", "trial-b"]
    assert q.acquire(1, timeout=0.01) == "board"
    assert q.acquire(1, timeout=0.05) is None  # held: times out


def test_board_state_from_a_fake_sysfs(tmp_path: Path) -> None:
    z = tmp_path / "thermal_zone0"
    z.mkdir()
    (z / "type").write_text("cpu-thermal\n")
    (z / "temp").write_text("71500\n")
    (z / "trip_point_0_type").write_text("passive\n")
    (z / "trip_point_0_temp").write_text("70000\n")
    temps, hot = read_temperatures(tmp_path)
    assert temps == {"cpu-thermal": 71.5} and hot is True
    flags = tmp_path / "get_throttled"
    flags.write_text("0x50000\n")  # throttled in the past, not now
    assert read_throttled(flags, tmp_path) == (False, "rpi-firmware")
    assert read_throttled(tmp_path / "missing", tmp_path) == (True, "thermal-trip")
