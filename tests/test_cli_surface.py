"""What users see does not change by accident: every `--help` and the shape of every JSON output
equal the files recorded in `tests/data/cli_surface/` (see `tests/cli_surface.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_surface import COLUMNS, DATA, help_texts, json_outputs


def _recorded(prefix: str, suffix: str) -> dict[str, Path]:
    return {p.name.removeprefix(prefix).removesuffix(suffix): p for p in sorted(DATA.glob(f"{prefix}*{suffix}"))}


def test_every_help_text_is_as_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", COLUMNS)
    texts = {name.replace(" ", "-"): text for name, text in help_texts().items()}
    recorded = _recorded("help-", ".txt")
    assert sorted(texts) == sorted(recorded), "a command was added or removed: re-record the surface on purpose"
    for name, path in recorded.items():
        assert texts[name] == path.read_text(), f"`{name} --help` changed"


@pytest.mark.slow
def test_every_json_output_has_the_recorded_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # json_outputs changes into its folder; restored afterwards
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(tmp_path / "locks"))
    shapes = json_outputs(tmp_path)
    recorded = _recorded("json-", ".json")
    assert sorted(shapes) == sorted(recorded)
    for name, path in recorded.items():
        assert shapes[name] == json.loads(path.read_text()), f"the JSON of `{name}` changed shape"
