"""The agent's HTTP service: `create_app(config)` builds the FastAPI app, `serve(...)` runs it.

The agent measures with the same engine as `LocalDevice` (a fresh pinned worker process per
measurement, under the machine's device lease), on the board it runs on, described by its local
device profile. Models arrive as raw bytes named by their sha256, are checked
(`edge_search.agent.security.check_model`) before any ONNX Runtime session exists, and are kept in
a cache folder the agent owns (``<cache>/<sha256>.onnx``, least recently used evicted first), so a
model already on the board is never sent twice. No endpoint takes a path: the client names models
by digest only. The wire format and the endpoint list are in `edge_search.agent.protocol`.

Limits: a bearer token on every endpoint (compared in constant time), a maximum model size (413),
a maximum JSON body (413), an upload time limit (408), a queue time limit per measurement (503),
the measurement worker's own time limit, and uvicorn's keep-alive and concurrency limits.
"""

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edge_search.agent.board import board_state
from edge_search.agent.fairqueue import SlotQueue
from edge_search.agent.protocol import (
    SHA256_PATTERN,
    AgentHealth,
    ErrorBody,
    MeasureResponse,
    ModelInfo,
    RemoteMeasureRequest,
)
from edge_search.agent.security import ModelRejected, check_model, tokens_match
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.lease import LeaseTimeout
from edge_search.devices.local import LocalDevice
from edge_search.devices.profile import DeviceProfile, LatencySpec
from edge_search.errors import EdgeSearchError, InputError

MiB = 1 << 20
_SHA = re.compile(SHA256_PATTERN)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs; built by ``edge-search agent serve`` or by tests."""

    token: str
    profile: DeviceProfile
    """The board's device profile, with ``latency.method: local`` (see `local_profile`)."""
    cache_dir: Path
    max_model_bytes: int = 256 * MiB
    max_cache_bytes: int = 2048 * MiB
    max_json_bytes: int = 1 * MiB
    max_measure_time_s: float = 120.0
    upload_timeout_s: float = 300.0
    warmup_max_s: float = 2.0
    min_measure_s: float = 0.5
    nice: int | None = -10
    openapi: bool = False
    """Serve ``/openapi.json`` (for API tooling and fuzzing; off on a board by default)."""


def local_profile(profile: DeviceProfile, cores: tuple[int, ...] | None = None) -> DeviceProfile:
    """`profile` turned into one that measures on this machine (``latency.method: local``)."""
    latency = LatencySpec(method="local", cores=cores if cores is not None else profile.latency.cores)
    return profile.model_copy(update={"latency": latency})


class ModelStore:
    """Models by sha256 in a folder the agent owns; written atomically, evicted least recently used."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        """Where the model with this digest lives (the digest is checked: no other path is built)."""
        if not _SHA.match(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / f"{sha256}.onnx"

    def get(self, sha256: str) -> Path | None:
        """The cached model's path (its use time refreshed), or None."""
        p = self.path(sha256)
        try:
            os.utime(p)
        except OSError:
            return None
        return p

    def count(self) -> int:
        """Models cached."""
        return sum(1 for _ in self.root.glob("*.onnx"))

    def put(self, sha256: str, data: bytes) -> Path:
        """Store `data` (already checked) under its digest, then evict beyond `max_bytes`."""
        target = self.path(sha256)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._evict(keep=target)
        return target

    def _evict(self, keep: Path) -> None:
        with self._lock:
            files = []
            for p in self.root.glob("*.onnx"):
                with contextlib.suppress(OSError):
                    st = p.stat()
                    files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files)
            for _, size, p in sorted(files):
                if total <= self.max_bytes:
                    break
                if p != keep:
                    with contextlib.suppress(OSError):
                        p.unlink()
                        total -= size


class AgentState:
    """Counters and the board's queue, shared by the endpoints.

    `board` is the board as a `LocalDevice`: its cores, the checks a request must pass before it
    queues, and (unless `device` replaces it, in tests) the measurements.
    """

    def __init__(self, config: AgentConfig, device: Device | None = None) -> None:
        self.config = config
        self.board = LocalDevice(config.profile, warmup_max_s=config.warmup_max_s,
                                 min_measure_s=config.min_measure_s, nice=config.nice,
                                 lease_timeout_s=config.max_measure_time_s * 2 + 60)
        self.device: Device = device if device is not None else self.board
        self.store = ModelStore(config.cache_dir, config.max_cache_bytes)
        self.queue: SlotQueue[str] = SlotQueue(["board"])
        self.started = time.time()
        self.measurements = 0
        self.uploads = 0
        self.last_measurement_at: float | None = None
        self._lock = threading.Lock()

    def health(self) -> AgentHealth:
        """The heartbeat answer."""
        from edge_search import __version__

        busy = self.queue.busy
        return AgentHealth(version=__version__, device=self.device.name, cores=self.board.cores,
                           busy=bool(busy), queue_length=len(busy) + self.queue.waiting,
                           measurements=self.measurements, uploads=self.uploads,
                           cached_models=self.store.count(), max_model_bytes=self.config.max_model_bytes,
                           max_measure_time_s=self.config.max_measure_time_s,
                           uptime_s=time.time() - self.started, server_time=time.time(),
                           last_measurement_at=self.last_measurement_at, board=board_state())

    def count(self, field: str) -> None:
        """Add one to a counter (thread-safe)."""
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)
            if field == "measurements":
                self.last_measurement_at = time.time()


def json_body_limit(app: ASGIApp, limit: int, exempt: Callable[[Scope], bool]) -> ASGIApp:
    """ASGI middleware: 413 for request bodies over `limit` bytes (the model upload is exempt)."""

    async def send_413(send: Send) -> None:
        body = b'{"detail":"request body too large"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or exempt(scope):
            await app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and (not value.isdigit() or int(value) > limit):
                await send_413(send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return msg

        started = False

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_413(send)

    return middleware


class _TooLarge(Exception):
    pass


_bearer = HTTPBearer(auto_error=False, description="the agent's token (edge-search agent serve --token-file)")
_ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody, "description": "missing or wrong token"}}


def create_app(config: AgentConfig, device: Device | None = None) -> FastAPI:
    """The agent's FastAPI app for `config`; `device` measures instead of a `LocalDevice` of the
    board's profile (tests: `edge_search.testing.FunctionDevice`), after the board's own checks."""
    state = AgentState(config, device)
    app = FastAPI(title="edge-search agent", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if config.openapi else None)
    app.state.agent = state

    def auth(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if creds is None or creds.scheme.lower() != "bearer" or not tokens_match(creds.credentials, config.token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    Sha = Annotated[str, PathParam(pattern=SHA256_PATTERN, description="sha256 of the model bytes (hex)")]

    @app.get("/health", response_model=AgentHealth, responses=_ERRORS, dependencies=[Depends(auth)])
    def health() -> AgentHealth:
        """The heartbeat: state, queue length and the board's temperatures, load and memory."""
        return state.health()

    def model_info(sha256: str) -> ModelInfo:
        path = state.store.get(sha256)
        if path is None:
            raise HTTPException(404, f"model {sha256} is not cached here")
        return ModelInfo(sha256=sha256, size_bytes=path.stat().st_size)

    cached_responses: dict[int | str, dict[str, Any]] = {**_ERRORS, 404: {"model": ErrorBody}}

    @app.get("/models/{sha256}", response_model=ModelInfo, responses=cached_responses,
             dependencies=[Depends(auth)])
    def get_model(sha256: Sha) -> ModelInfo:
        """Whether a model is cached here (200) or must be uploaded first (404)."""
        return model_info(sha256)

    @app.head("/models/{sha256}", response_model=ModelInfo, responses=cached_responses,
              dependencies=[Depends(auth)])
    def head_model(sha256: Sha) -> ModelInfo:
        """`GET /models/{sha256}` without the body."""
        return model_info(sha256)

    upload_body = {"requestBody": {"required": True, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

    @app.put("/models/{sha256}", response_model=ModelInfo, status_code=201, openapi_extra=upload_body,
             dependencies=[Depends(auth)],
             responses={**_ERRORS, 200: {"model": ModelInfo, "description": "already cached"},
                        400: {"model": ErrorBody}, 408: {"model": ErrorBody}, 413: {"model": ErrorBody},
                        422: {"model": ErrorBody}})
    async def put_model(sha256: Sha, request: Request, response: Response) -> ModelInfo:
        """Upload a model's raw bytes under their sha256; checked before it is stored."""
        cached = state.store.get(sha256)
        if cached is not None:
            response.status_code = 200
            return ModelInfo(sha256=sha256, size_bytes=cached.stat().st_size)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > config.max_model_bytes):
            raise HTTPException(413, f"model larger than this agent accepts ({config.max_model_bytes} bytes)")
        data = await _read_limited(request, config.max_model_bytes, config.upload_timeout_s)
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise HTTPException(400, f"body sha256 {digest} does not match {sha256}")
        try:
            await run_in_threadpool(check_model, data)
        except ModelRejected as err:
            raise HTTPException(422, f"model refused: {err}") from None
        await run_in_threadpool(state.store.put, sha256, data)
        state.count("uploads")
        return ModelInfo(sha256=sha256, size_bytes=len(data), created=True)

    @app.post("/measure", response_model=MeasureResponse, dependencies=[Depends(auth)],
              responses={**_ERRORS, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
                         500: {"model": ErrorBody, "description": "the measurement failed on the board"},
                         503: {"model": ErrorBody, "description": "busy for longer than queue_timeout_s"}})
    def measure(body: RemoteMeasureRequest) -> MeasureResponse:
        """Measure a cached model on the board (one measurement at a time, by priority)."""
        return _measure(state, body)

    app.add_middleware(_BodyLimitMiddleware, limit=config.max_json_bytes)
    return app


class _BodyLimitMiddleware:
    """`json_body_limit` as a Starlette middleware class (the model upload has its own limit)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._inner = json_body_limit(app, limit, lambda s: s.get("method") == "PUT"
                                      and str(s.get("path", "")).startswith("/models/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inner(scope, receive, send)


async def _read_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, at most `limit` bytes (413) within `timeout_s` seconds (408)."""
    from starlette.requests import ClientDisconnect

    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"model larger than this agent accepts ({limit} bytes)")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPException(408, f"upload not finished within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected during the upload") from None
    return b"".join(chunks)


def _measure(state: AgentState, body: RemoteMeasureRequest) -> MeasureResponse:
    """Queue for the board, measure in a fresh worker, return the stats and the board's state."""
    if body.max_time_s > state.config.max_measure_time_s:
        raise HTTPException(422, f"max_time_s {body.max_time_s:g} exceeds this agent's limit "
                                 f"({state.config.max_measure_time_s:g} s)")
    path = state.store.get(body.model_sha256)
    if path is None:
        raise HTTPException(404, f"model {body.model_sha256} is not cached here; PUT /models/{{sha256}} first")
    fields = body.model_dump(exclude={"model_sha256", "queue_timeout_s"})
    request = MeasureRequest(model_path=path, **fields)
    try:
        state.board.check(request)
    except InputError as err:
        raise HTTPException(422, str(err)) from None
    t0 = time.monotonic()
    slot = state.queue.acquire(body.priority, timeout=body.queue_timeout_s)
    if slot is None:
        raise HTTPException(503, f"the board stayed busy for {body.queue_timeout_s:g} s",
                            headers={"Retry-After": "5"})
    waited = time.monotonic() - t0
    try:
        stats = state.device.measure(request)
    except InputError as err:
        raise HTTPException(422, str(err)) from None
    except LeaseTimeout as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from None
    except EdgeSearchError as err:
        raise HTTPException(500, f"measurement failed on the board: {err}") from None
    finally:
        state.queue.release(slot)
    state.count("measurements")
    extra = {k: v for k, v in stats.extra.items() if k != "model_path"}
    extra["model_sha256"] = body.model_sha256
    stats = stats.model_copy(update={"extra": extra, "lease_wait_s": stats.lease_wait_s + waited})
    return MeasureResponse(stats=stats, board=board_state(), queue_wait_s=waited, agent_device=state.device.name)


def serve(config: AgentConfig, host: str = "127.0.0.1", port: int = 7070, *, ssl_certfile: str | None = None,
          ssl_keyfile: str | None = None, log_level: str = "warning") -> None:
    """Run the agent until interrupted (uvicorn; binds 127.0.0.1 unless told otherwise)."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                limit_concurrency=64, server_header=False, proxy_headers=False,
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=5)
