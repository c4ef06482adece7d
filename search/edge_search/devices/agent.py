"""`AgentDevice`: latency measured on real boards running ``edge-search agent serve``.

A profile with ``latency.method: agent`` lists one or more agents (``latency.agents``: URL and
token file); together they are a pool of identical boards. Each `measure` call:

1. waits in a priority queue (`SlotQueue`) for a free, live agent of the pool: one measurement per
   agent at a time, lower ``MeasureRequest.priority`` first (a CI budget check before a search
   trial), least recently used agent first;
2. uploads the model only when that agent lacks it (``HEAD /models/{sha256}``, then ``PUT``);
3. asks it to measure (``POST /measure``) and returns its `LatencyStats` with ``device`` set to this
   profile's name and ``extra["agent"]`` to the agent's URL (``extra["board"]``: the board's state).

Heartbeats: a background thread sends ``GET /health`` to every agent every `heartbeat_s` seconds
(short timeout) and marks it live or dead; dead agents get no work until a heartbeat finds them
again. When an agent dies or times out mid-measurement, nothing is lost: it is marked dead and the
same request goes to another live agent of the pool; when none is left, `EdgeSearchError` says
why, so the trial fails with that reason and the study carries on (and the trial is redone).

Token: ``token_file`` of the agent's entry, else ``$EDGE_SEARCH_AGENT_TOKEN``.

TLS: an ``https://`` agent's certificate is verified against the entry's ``ca_file`` (a PEM CA
bundle, or the agent's self-signed certificate), else the system's trust store; ``verify: false``
turns the check off. A certificate that does not verify is a configuration error, like a refused
token: when every agent of the pool is refused, `measure` raises `InputError` with the reason.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_search.agent.fairqueue import SlotQueue
from edge_search.agent.protocol import AgentHealth, MeasureResponse, RemoteMeasureRequest
from edge_search.devices.base import Device, MeasureRequest
from edge_search.devices.profile import AgentAddress, DeviceProfile
from edge_search.devices.stats import LatencyStats
from edge_search.errors import EdgeSearchError, InputError, MissingDependency

TOKEN_ENV = "EDGE_SEARCH_AGENT_TOKEN"


class AgentUnauthorized(EdgeSearchError):
    """The agent refused the token (HTTP 401)."""


class AgentUntrusted(EdgeSearchError):
    """The agent's TLS certificate does not verify against the CA the client trusts."""


Verify = ssl.SSLContext | bool
"""What httpx checks an agent's certificate with: a context holding the CA, or True/False."""


def agent_verify(address: AgentAddress) -> Verify:
    """How to check `address`'s certificate: its `ca_file`, else the system store, else nothing."""
    if not address.verify:
        return False
    if address.ca_file is None:
        return True
    path = Path(address.ca_file).expanduser()
    try:
        return ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise InputError(f"agent {address.url}: cannot read ca_file {path}: {reason}") from None


def _untrusted(err: BaseException) -> str | None:
    """The verification failure behind an httpx error, if a certificate check is what failed."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    return text.split("certificate verify failed:")[-1].strip() if "CERTIFICATE_VERIFY_FAILED" in text else None


def agent_token(address: AgentAddress) -> str | None:
    """The bearer token for `address`: its token file, else ``$EDGE_SEARCH_AGENT_TOKEN``, else None."""
    if address.token_file:
        path = Path(address.token_file).expanduser()
        try:
            return path.read_text().strip()
        except OSError as err:
            raise InputError(f"agent {address.url}: cannot read token file {path}: {err.strerror}") from None
    return os.environ.get(TOKEN_ENV) or None


def _httpx() -> Any:
    try:
        import httpx
    except ModuleNotFoundError:
        raise MissingDependency("httpx", "agent") from None
    return httpx


def make_client(url: str, token: str | None, timeout_s: float, transport: Any = None,
                verify: Verify = True) -> Any:
    """An `httpx.Client` for one agent (bearer token set, no redirects followed, certificate
    checked as `verify` says)."""
    httpx = _httpx()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s,
                        follow_redirects=False, transport=transport, verify=verify)


def probe(url: str, token: str | None, timeout_s: float = 2.0, transport: Any = None,
          verify: Verify = True) -> AgentHealth:
    """One heartbeat to `url`; raises `EdgeSearchError` with the reason when it does not answer
    (`AgentUntrusted` when its certificate does not verify, `AgentUnauthorized` on a refused token)."""
    httpx = _httpx()
    with make_client(url, token, timeout_s, transport, verify) as client:
        try:
            resp = client.get("/health")
        except httpx.HTTPError as err:
            untrusted = _untrusted(err)
            if untrusted is not None:
                raise AgentUntrusted(f"agent {url}: its TLS certificate is not trusted (certificate verify failed: "
                                     f"{untrusted}); set "
                                     "ca_file of this agent in latency.agents to the CA that signed it"
                                     ) from None
            raise EdgeSearchError(f"agent {url} does not answer: {type(err).__name__}: {err}") from None
    if resp.status_code == 401:
        raise AgentUnauthorized(f"agent {url} refused the token (401)")
    if resp.status_code != 200:
        raise EdgeSearchError(f"agent {url} answered {resp.status_code}: {resp.text[:200]}")
    return AgentHealth.model_validate(resp.json())


@dataclass
class AgentSlot:
    """One agent of the pool, as the client sees it."""

    url: str
    token: str | None
    verify: Verify = True
    """How its TLS certificate is checked (`agent_verify`)."""
    alive: bool = True
    """False after a failed heartbeat or request, until a heartbeat answers again."""
    last_heartbeat: float | None = None
    """``time.time()`` of the last answered heartbeat."""
    last_error: str = ""
    refused: bool = False
    """True while the agent refuses our token or we refuse its certificate (a configuration error,
    not an outage)."""
    health: AgentHealth | None = None
    measurements: int = 0
    known_models: set[str] = field(default_factory=set)

    def __hash__(self) -> int:
        return hash(self.url)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AgentSlot) and other.url == self.url


class _AgentFailed(Exception):
    """This agent could not measure this request; another agent may (`retry`) or none would."""

    def __init__(self, reason: str, retry: bool = True, dead: bool = True) -> None:
        super().__init__(reason)
        self.retry = retry
        self.dead = dead


class AgentDevice(Device):
    """A pool of boards behind ``edge-search agent``; see the module docstring."""

    latency_source = "measured"

    def __init__(self, profile: DeviceProfile, *, heartbeat_s: float = 5.0, heartbeat_timeout_s: float = 2.0,
                 connect_timeout_s: float = 5.0, upload_timeout_s: float = 300.0,
                 measure_overhead_s: float = 120.0, queue_timeout_s: float | None = None,
                 transport: Any = None) -> None:
        """`measure_overhead_s` is added to a request's own time budget for the HTTP read timeout
        (worker start, session load, warm-up, the agent's queue); `queue_timeout_s` None waits for
        a free agent for as long as any agent of the pool is alive; `transport` replaces httpx's
        network transport (tests)."""
        if profile.latency.method != "agent" or not profile.latency.agents:
            raise InputError(f"device '{profile.name}' has latency.method '{profile.latency.method}' "
                             "and no agents; not an agent pool")
        self.profile = profile
        self.name = profile.name
        self.heartbeat_s = heartbeat_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.measure_overhead_s = measure_overhead_s
        self.queue_timeout_s = queue_timeout_s
        self.transport = transport
        self.agents = [AgentSlot(a.url.rstrip("/"), agent_token(a), agent_verify(a)) for a in profile.latency.agents]
        self.queue: SlotQueue[AgentSlot] = SlotQueue(self.agents)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # --- heartbeats ----------------------------------------------------------------------------

    def heartbeat(self, agent: AgentSlot) -> bool:
        """Probe one agent now; updates its state and returns whether it is alive."""
        try:
            agent.health = probe(agent.url, agent.token, self.heartbeat_timeout_s, self.transport, agent.verify)
        except EdgeSearchError as err:
            refused = isinstance(err, AgentUnauthorized | AgentUntrusted)
            agent.alive, agent.last_error, agent.refused = False, str(err), refused
            self.queue.wake()
            return False
        agent.alive, agent.last_heartbeat, agent.last_error, agent.refused = True, time.time(), "", False
        self.queue.wake()
        return True

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            for agent in self.agents:
                if self._stop.is_set():
                    return
                if not self.queue.is_held(agent):  # a request in flight tells its own outcome
                    self.heartbeat(agent)

    def _start(self) -> None:
        """First use: probe every agent once, then keep heartbeats going in the background."""
        with self._start_lock:
            if self._thread is not None:
                return
            threads = [threading.Thread(target=self.heartbeat, args=(a,), daemon=True) for a in self.agents]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self._thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.name}",
                                            daemon=True)
            self._thread.start()

    def status(self) -> list[dict[str, Any]]:
        """Each agent's state after a fresh heartbeat: url, alive, busy, queue length, last heartbeat."""
        rows = []
        for agent in self.agents:
            self.heartbeat(agent)
            h = agent.health if agent.alive else None
            rows.append({"url": agent.url, "alive": agent.alive, "busy": h.busy if h else None,
                         "queue_length": h.queue_length if h else None, "last_heartbeat": agent.last_heartbeat,
                         "device": h.device if h else None, "error": agent.last_error})
        return rows

    # --- one measurement -----------------------------------------------------------------------

    def _ensure_model(self, client: Any, agent: AgentSlot, sha: str, data: bytes) -> None:
        """Upload the model unless the agent has it already."""
        if sha in agent.known_models:
            return
        resp = client.head(f"/models/{sha}")
        if resp.status_code == 404:
            limit = agent.health.max_model_bytes if agent.health else 0
            if limit and len(data) > limit:
                raise _AgentFailed(f"model is {len(data)} bytes; agent {agent.url} accepts at most {limit}",
                                   retry=True, dead=False)
            resp = client.put(f"/models/{sha}", content=data,
                              headers={"Content-Type": "application/octet-stream"},
                              timeout=self._timeout(self.upload_timeout_s))
        self._raise_for(resp, agent, "upload")
        agent.known_models.add(sha)

    def _timeout(self, read_s: float) -> Any:
        return _httpx().Timeout(read_s, connect=self.connect_timeout_s)

    def _raise_for(self, resp: Any, agent: AgentSlot, what: str) -> None:
        code = resp.status_code
        if code < 300:
            return
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        reason = f"agent {agent.url} {what}: {code} {str(detail)[:300]}"
        if code == 401:
            agent.refused = True
            raise _AgentFailed(reason + " (check the token file)", retry=True, dead=True)
        if code in (400, 413, 422):
            raise _AgentFailed(reason, retry=False, dead=False)
        if code == 503:
            raise _AgentFailed(reason, retry=True, dead=False)
        raise _AgentFailed(reason, retry=True, dead=code >= 500)

    def _measure_on(self, agent: AgentSlot, request: MeasureRequest, sha: str, data: bytes) -> LatencyStats:
        httpx = _httpx()
        body = RemoteMeasureRequest(
            model_sha256=sha, session=request.session, shapes=request.shapes,
            precision_target=request.precision_target, max_time_s=request.max_time_s,
            min_samples=request.min_samples, max_samples=request.max_samples,
            warmup_min_runs=request.warmup_min_runs, warmup_min_s=request.warmup_min_s,
            priority=request.priority, queue_timeout_s=min(self.measure_overhead_s, 3600.0))
        read_s = self.measure_overhead_s + 2.0 * request.max_time_s + body.queue_timeout_s
        with make_client(agent.url, agent.token, self.heartbeat_timeout_s, self.transport, agent.verify) as client:
            try:
                self._ensure_model(client, agent, sha, data)
                resp = client.post("/measure", content=body.model_dump_json(),
                                   headers={"Content-Type": "application/json"}, timeout=self._timeout(read_s))
                if resp.status_code == 404:  # evicted from the agent's cache meanwhile
                    agent.known_models.discard(sha)
                    self._ensure_model(client, agent, sha, data)
                    resp = client.post("/measure", content=body.model_dump_json(),
                                       headers={"Content-Type": "application/json"},
                                       timeout=self._timeout(read_s))
            except httpx.HTTPError as err:
                raise _AgentFailed(f"agent {agent.url} failed mid-request: {type(err).__name__}: {err}"
                                   ) from None
            self._raise_for(resp, agent, "measure")
            try:
                answer = MeasureResponse.model_validate(resp.json())
            except ValueError as err:
                raise _AgentFailed(f"agent {agent.url} sent an unreadable answer: {err}") from None
        stats = answer.stats
        extra = {**stats.extra, "agent": agent.url, "agent_device": answer.agent_device,
                 "board": answer.board.model_dump(mode="json"), "model_path": str(request.model_path)}
        return stats.model_copy(update={"device": self.name, "extra": extra})

    def measure(self, request: MeasureRequest) -> LatencyStats:
        """Measure on a free agent of the pool (see the module docstring for queueing and retries).

        A provider the pool's profile does not list is refused here; one the board's ONNX Runtime
        lacks is refused by the agent (422, with its reason), never measured on a CPU fallback."""
        bad = [p for p in request.session.providers if p not in self.profile.execution_providers]
        if bad:
            raise InputError(f"execution provider(s) {', '.join(bad)} not offered by device '{self.name}' "
                             f"(it has {', '.join(self.profile.execution_providers)})")
        path = Path(request.model_path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(f"{path}: cannot read the model: {err.strerror}") from None
        sha = hashlib.sha256(data).hexdigest()
        self._start()
        tried: set[str] = set()
        failures: list[dict[str, str]] = []
        t0 = time.monotonic()
        while True:
            def usable(a: AgentSlot) -> bool:
                return a.alive and a.url not in tried

            def hopeless() -> bool:
                return not any(usable(a) for a in self.agents)

            if hopeless():
                self._revive(tried)
            agent = self.queue.acquire(request.priority, eligible=usable, give_up=hopeless,
                                       timeout=self.queue_timeout_s)
            if agent is None:
                return self._give_up(failures, t0)
            waited = time.monotonic() - t0
            try:
                stats = self._measure_on(agent, request, sha, data)
            except _AgentFailed as err:
                failures.append({"agent": agent.url, "reason": str(err)})
                if err.dead:
                    agent.alive, agent.last_error = False, str(err)
                if not err.retry:
                    raise EdgeSearchError(str(err)) from None
                tried.add(agent.url)
                continue
            finally:
                self.queue.release(agent)
            agent.measurements += 1
            extra = {**stats.extra, "agent_retries": failures} if failures else stats.extra
            return stats.model_copy(update={"extra": extra, "lease_wait_s": stats.lease_wait_s + waited})

    def _revive(self, tried: set[str]) -> None:
        """No agent is usable: probe the dead ones not yet tried for this request, once."""
        for agent in self.agents:
            if not agent.alive and agent.url not in tried:
                self.heartbeat(agent)

    def _give_up(self, failures: list[dict[str, str]], t0: float) -> LatencyStats:
        if all(a.refused for a in self.agents):
            untrusted = [a.last_error for a in self.agents if "TLS certificate" in a.last_error]
            if untrusted:
                raise InputError(f"device '{self.name}': {'; '.join(untrusted)}")
            urls = ", ".join(a.url for a in self.agents)
            raise InputError(f"device '{self.name}': every agent refused the token ({urls}); check the "
                             f"token_file of latency.agents or ${TOKEN_ENV}")
        if failures:
            reasons = "; ".join(f["reason"] for f in failures)
            raise EdgeSearchError(f"device '{self.name}': no agent of the pool could measure: {reasons}")
        dead = "; ".join(a.last_error or f"{a.url} is down" for a in self.agents if not a.alive)
        if dead:
            raise EdgeSearchError(f"device '{self.name}': no live agent in the pool ({dead})")
        raise EdgeSearchError(f"device '{self.name}': no agent became free within "
                              f"{time.monotonic() - t0:.0f} s")

    def close(self) -> None:
        """Stop the heartbeats."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_timeout_s + 1.0)
