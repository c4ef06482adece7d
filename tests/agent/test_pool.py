"""A search against a pool of two real agent processes on 127.0.0.1, one of them killed mid-run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from edge_search.cli import main
from edge_search.devices import create_device
from edge_search.devices.base import MeasureRequest
from edge_search.devices.profile import load_profile_file
from edge_search.errors import EdgeSearchError, InputError
from edge_search.tracking import absolute_sqlite
from tests.agent.conftest import AgentProcess, auth, pool_profile
from tests.conftest import FAST_MEASURE

pytestmark = pytest.mark.slow


def _kill_first_busy(agents: list[AgentProcess], killed: list[AgentProcess], stop: threading.Event) -> None:
    """Poll the agents' heartbeats; SIGKILL the first one caught measuring."""
    while not stop.is_set():
        for a in agents:
            try:
                busy = a.health(timeout=1.0)["busy"]
            except httpx.HTTPError:
                continue
            if busy:
                a.kill()
                killed.append(a)
                return
        time.sleep(0.02)


def test_search_on_a_pool_survives_an_agent_killed_mid_measurement(
        agent_pair: list[AgentProcess], workdir: Path, small_space: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    profiles = workdir / "profiles"
    pool_profile(profiles, [a.url for a in agent_pair], workdir / "token")
    killed: list[AgentProcess] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_busy, args=(agent_pair, killed, stop), daemon=True)
    killer.start()
    try:
        code = main(["run", "--space", str(small_space), "--device", "pool-test", "--profiles", str(profiles),
                     "--trials", "4", "--sampler", "random", "--seed", "3", *FAST_MEASURE,
                     # the trials' measurements only: confirmation rounds are measured too but not cached,
                     # which the count of the survivor's measurements below would mix in
                     "--confirm-rounds", "0"])
    finally:
        stop.set()
        killer.join(5)
    assert code == 0, capsys.readouterr().err
    assert len(killed) == 1, "no agent was caught mid-measurement"
    dead, = killed
    survivor, = [a for a in agent_pair if a is not dead]

    study = optuna.load_study(study_name="digits-small-pool-test", storage="sqlite:///edge-search.db")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states  # none lost
    for t in study.trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("fail_reason")  # failed explicitly, with its reason

    # one MLflow child run per trial: nothing counted twice
    client = MlflowClient(absolute_sqlite("sqlite:///mlflow.db"))
    parent = study.user_attrs["mlflow_parent_run_id"]
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent}'", max_results=100)
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert sorted(numbers) == sorted(t.number for t in study.trials)
    assert sum(r.data.tags["trial_state"] == "COMPLETE" for r in runs) == 4

    # every measurement came back through the pool; the one in flight on the killed agent was redone
    # on the survivor, which did all the work after the kill
    measured = [json.loads(p.read_text()) for p in (workdir / ".edge-search/cache").rglob("*.json")
                if "measurements" in p.parts]
    assert measured and all(m["device"] == "pool-test" and m["extra"]["agent"] in {dead.url, survivor.url}
                            for m in measured)
    retried = [m for m in measured if m["extra"].get("agent_retries")]
    assert len(retried) == 1 and retried[0]["extra"]["agent"] == survivor.url
    assert retried[0]["extra"]["agent_retries"][0]["agent"] == dead.url
    assert "failed mid-request" in retried[0]["extra"]["agent_retries"][0]["reason"]
    assert all(m["extra"]["agent"] == survivor.url for m in measured if m["started_at"] >= retried[0]["started_at"])
    assert survivor.health()["measurements"] == sum(m["extra"]["agent"] == survivor.url for m in measured)


def test_pool_uploads_once_reports_state_and_fails_with_a_reason(
        agent_pair: list[AgentProcess], workdir: Path, tiny_model: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    profiles = workdir / "profiles"
    path = pool_profile(profiles, [a.url for a in agent_pair], workdir / "token")
    device = create_device(load_profile_file(path), heartbeat_s=0.5)
    request = MeasureRequest(model_path=tiny_model, precision_target=0.05, max_time_s=0.5, priority=0)
    try:
        stats = [device.measure(request) for _ in range(3)]
        assert {s.device for s in stats} == {"pool-test"}
        assert {s.extra["agent"] for s in stats} == {a.url for a in agent_pair}  # spread over the pool
        assert all(s.median_ms > 0 and s.extra["board"]["memory_total_mb"] > 0 for s in stats)
        healths = [a.health() for a in agent_pair]
        assert sum(int(str(h["measurements"])) for h in healths) == 3
        assert [h["uploads"] for h in healths] == [1, 1]  # the model went to each agent once

        # the CLI shows each agent's state, queue length and last heartbeat
        assert main(["agent", "status", agent_pair[0].url, "--token-file", str(workdir / "token")]) == 0
        out = capsys.readouterr().out
        assert "queue length" in out and "last heartbeat" in out and "idle" in out
        assert main(["agent", "status", agent_pair[0].url]) == 1  # no token
        assert "401" in capsys.readouterr().err
        assert main(["devices", "--profiles", str(profiles), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["agents"]
        assert {(r["url"], r["state"]) for r in rows} == {(a.url, "idle") for a in agent_pair}
        assert all(r["queue_length"] == 0 and r["last_heartbeat"] for r in rows)

        # unauthenticated requests to the live agent are refused
        r = httpx.get(f"{agent_pair[0].url}/health", timeout=5)
        assert r.status_code == 401
        r = httpx.post(f"{agent_pair[0].url}/measure", json={"model_sha256": "0" * 64},
                       headers=auth("not-the-token-0123456789"), timeout=5)
        assert r.status_code == 401

        # a pool whose every agent refuses the token is a configuration error (exit 2), not a trial failure
        (workdir / "wrong").write_text("not-the-token-0123456789")
        bad = create_device(load_profile_file(pool_profile(workdir / "bad", [a.url for a in agent_pair],
                                                           workdir / "wrong", name="pool-bad")))
        try:
            with pytest.raises(InputError, match="refused the token"):
                bad.measure(request)
        finally:
            bad.close()

        for a in agent_pair:
            a.kill()
        with pytest.raises(EdgeSearchError, match=r"no live agent|no agent of the pool") as err:
            device.measure(request)
        assert not isinstance(err.value, InputError)  # a failed trial, not a stopped study
        assert main(["devices", "--profiles", str(profiles), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["agents"]
        assert {r["state"] for r in rows} == {"down"}
    finally:
        device.close()
