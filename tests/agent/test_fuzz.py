"""API fuzzing: schemathesis generates requests from the agent's OpenAPI schema; none may get a 5xx.

Runs in-process (ASGI). The measurement engine is replaced by a fast stand-in that still applies
`LocalDevice.check`, so fuzzed bodies that name the cached model reach the whole measure path
without starting a worker for each. Positive (schema-valid) and negative (schema-violating) cases
are sent to every operation with the token; the number sent is printed and asserted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from edge_search.agent.server import AgentConfig, create_app, local_profile
from edge_search.devices.profile import get_profile
from edge_search.devices.stats import LatencyStats
from edge_search.testing import FunctionDevice
from tests.agent.conftest import TOKEN, auth, sha

EXAMPLES_PER_OPERATION_AND_MODE = 80


def test_fuzz_agent_api_finds_no_server_error(tmp_path: Path, tiny_model: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    profile = local_profile(get_profile("host"))
    config = AgentConfig(token=TOKEN, profile=profile, cache_dir=tmp_path / "models", max_model_bytes=32 * 1024,
                         max_measure_time_s=5.0, openapi=True)
    # measurements are synthetic (the board's request checks are the real ones)
    fast = FunctionDevice(lambda _: LatencyStats.from_samples([1.0, 1.1, 0.9, 1.05], device=profile.name),
                          name=profile.name)
    app = create_app(config, device=fast)
    data = tiny_model.read_bytes()
    digest = sha(data)
    with TestClient(app) as c:
        assert c.put(f"/models/{digest}", content=data, headers=auth()).status_code == 201

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    sent: dict[str, int] = {}
    statuses: dict[str, dict[int, int]] = {}

    def point_at_cached_model(case: Any, use_cached: bool) -> Any:
        """Half the measure bodies name the cached model with default knobs, so they get past 404/422."""
        if use_cached and isinstance(case.body, dict) and "model_sha256" in case.body:
            case.body["model_sha256"] = digest
            case.body.pop("session", None)
            if not isinstance(case.body.get("max_time_s"), int | float) or not 0 < case.body["max_time_s"] <= 5:
                case.body.pop("max_time_s", None)
        return case

    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert {op.label for op in operations} >= {"GET /health", "GET /models/{sha256}", "PUT /models/{sha256}",
                                               "POST /measure"}
    def fuzzer(label: str, strategy: st.SearchStrategy[Any]) -> Any:
        @hypothesis.given(case=strategy)
        @settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            response = case.call(headers=auth())
            sent[label] = sent.get(label, 0) + 1
            seen = statuses.setdefault(label, {})
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])

        return fuzz

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.tuples(op.as_strategy(generation_mode=mode), st.booleans()).map(
                lambda pair: point_at_cached_model(*pair))
            fuzzer(op.label, strategy)()

    total = sum(sent.values())
    print(f"\nfuzzed {total} requests; status codes per operation:")
    for label, codes in statuses.items():
        print(f"  {label}: {sent[label]} requests, {dict(sorted(codes.items()))}")
    assert total >= 500
    assert not any(code >= 500 for codes in statuses.values() for code in codes)
    assert statuses["POST /measure"].get(200, 0) > 0  # some fuzzed bodies reached a measurement
    with TestClient(app) as c:  # still serving after the fuzz run
        assert c.get("/health", headers=auth()).status_code == 200
