"""Stored baselines (``--save-baseline`` writes one, ``--baseline`` reads it): every measured round
of every model, so a later job can compare against them (unpaired), and the rule that a baseline
from another CPU or ONNX Runtime version can warn but never fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from edge_search.devices.stats import LatencyStats
from edge_search.errors import InputError
from edge_search.schema import StrictModel, format_validation_error

BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND: Literal["edge-search-check-baseline"] = "edge-search-check-baseline"




class BaselineEntry(StrictModel):
    """One model's baseline: every measured round, its size and (if evaluated) its accuracy."""

    model: str
    rounds: tuple[LatencyStats, ...] = Field(min_length=2)
    size_mb: float | None = None
    accuracy: float | None = None


class BaselineFile(StrictModel):
    """``--save-baseline`` output, read back by ``--baseline``: per model name, its rounds."""

    schema_version: int = BASELINE_SCHEMA_VERSION
    kind: Literal["edge-search-check-baseline"] = BASELINE_KIND
    device: str
    created_at: float = 0.0
    models: dict[str, BaselineEntry]


def load_baseline(path: Path) -> BaselineFile:
    """Read a baseline file; a missing, foreign or malformed file is an `InputError`."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such baseline file") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable JSON baseline: {err}") from None
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise InputError(f"{path}: not an edge-search check baseline (write one with --save-baseline)")
    if data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise InputError(f"{path}: baseline schema_version {data.get('schema_version')} is not supported")
    try:
        return BaselineFile.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(str(path), err)) from None


def comparable_hosts(a: LatencyStats, b: LatencyStats) -> str | None:
    """Why two measurements' hosts are not comparable (CPU model, ONNX Runtime), or None."""
    for what, x, y in (("CPU", a.host.cpu_model, b.host.cpu_model),
                       ("ONNX Runtime", a.host.ort_version, b.host.ort_version)):
        if x and y and x != y:
            return f"baseline {what} '{x}' differs from this run's '{y}'"
    return None
