"""The docs stay inside the repository and the README stays an entry page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "examples" / "README.md",
         ROOT / "examples" / "ci" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_an_entry_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    assert 'pip install -e ".[torch]" && edge-search run --device host --trials 24' in text
    assert 'pip install -e ".[dev]" && python -m pytest -q' in text
    # ... and what the tests it skips need (the extras and services), and how CI makes them required
    for needed in ("`ray` extra", "`postgres` extra", "$EDGE_SEARCH_TEST_POSTGRES", "`chromium-driver`",
                   "EDGE_SEARCH_REQUIRE_POSTGRES", "`_BROWSER`", "`_RAY`"):
        assert needed in text, needed
    from edge_search.cli import COMMANDS

    assert all(f"`edge-search {name}`" in text for name in COMMANDS), "the command table lists every command"


def test_every_link_resolves_inside_the_repository() -> None:
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{page.relative_to(ROOT)} links outside the repository: {target}"
            assert resolved.exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_architecture_names_every_seam_with_its_file() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for seam, path in [("SearchSpace", "space.py"), ("Task", "tasks/base.py"), ("Transform", "transforms/base.py"),
                       ("Device", "devices/base.py"), ("Driver", "drivers/base.py"), ("Tracker", "tracking.py")]:
        assert f"`{seam}`" in text and f"search/edge_search/{path}" in text, seam
        assert (ROOT / "search" / "edge_search" / path).is_file()
