"""Optional services and extras: a test that needs one skips with the reason where it is missing,
and fails where CI says it must be there (EDGE_SEARCH_REQUIRE_*=1, set by .ci/run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[1]


def test_missing_requirement_skips_or_fails_as_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_SEARCH_REQUIRE_X", raising=False)
    require(None, "EDGE_SEARCH_REQUIRE_X")  # available: nothing happens
    with pytest.raises(pytest.skip.Exception, match="no x here"):
        require("no x here", "EDGE_SEARCH_REQUIRE_X")
    monkeypatch.setenv("EDGE_SEARCH_REQUIRE_X", "1")
    with pytest.raises(pytest.fail.Exception, match=r"no x here.*required here"):
        require("no x here", "EDGE_SEARCH_REQUIRE_X")


def test_ci_requires_every_optional_service_it_installs() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    for env in ("EDGE_SEARCH_REQUIRE_POSTGRES", "EDGE_SEARCH_REQUIRE_BROWSER", "EDGE_SEARCH_REQUIRE_RAY"):
        assert f"export {env}=1" in script or f"{env}=1 " in script, env
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_requirements.py")
    assert "skipif(browser" not in tests and 'importorskip("ray"' not in tests  # the gates go through require()
