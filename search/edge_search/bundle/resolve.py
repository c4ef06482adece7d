"""An ONNX file or a bundle folder, as the commands that measure or predict a model take it.

`predict`, `measure` and `check` accept either; a bundle folder (written by `edge-search export`,
or made by hand with a ``manifest.json``) gives its model file, the session knobs its latency was
measured with and the concrete input shapes it was measured at, so an exported model with dynamic
dimensions needs no ``--shape``. Explicit options and budgets-file fields override what the bundle
records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edge_search.bundle.runtime import (
    MODEL_FILE,
    manifest_model_file,
    manifest_session_options,
    manifest_shapes,
    read_manifest,
)
from edge_search.devices.base import SessionKnobs
from edge_search.errors import InputError
from edge_search.schema import validation_problem


@dataclass(frozen=True)
class ResolvedModel:
    """An ONNX file to measure, with knobs and shapes a bundle's manifest supplies (if any)."""

    onnx_path: Path
    kind: Literal["onnx", "bundle"] = "onnx"
    session: SessionKnobs | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def shapes_with(self, *overrides: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """The bundle's shapes updated by each of `overrides` in turn (later ones win)."""
        out = dict(self.shapes)
        for extra in overrides:
            out.update({k: tuple(int(d) for d in v) for k, v in extra.items()})
        return out


def resolve_model(path: Path) -> ResolvedModel:
    """An ONNX file as it is; a bundle folder as its model plus the manifest's session knobs and shapes.

    The manifest (the bundle format of `edge_search.bundle.runtime`: ``bundle.json`` as
    `edge-search export` writes it, or ``manifest.json``) gives the model file (``model.file``,
    default ``model.onnx``), the session knobs (``session_options`` or ``session``: the
    `SessionKnobs` fields; others such as ``allow_spinning`` are ignored) and the measured input
    shapes (``inputs``). Raises `InputError` for a missing path or a folder without a model.
    """
    if not path.is_dir():
        if not path.is_file():
            raise InputError(f"{path}: no such model file or bundle")
        return ResolvedModel(path)
    session: SessionKnobs | None = None
    shapes: dict[str, tuple[int, ...]] = {}
    model_file = MODEL_FILE
    try:
        found = read_manifest(path)
    except ValueError as err:
        raise InputError(str(err)) from None
    if found is not None:
        mpath, manifest = found
        model_file = manifest_model_file(manifest)
        raw = manifest_session_options(manifest)
        if raw is not None:
            known = {k: v for k, v in raw.items() if k in SessionKnobs.model_fields}
            try:
                session = SessionKnobs.model_validate(known)
            except ValidationError as err:
                raise InputError(f"{mpath}: session options: {validation_problem(err).message}") from None
        shapes = manifest_shapes(manifest)
    onnx_path = path / model_file
    if not onnx_path.is_file():
        raise InputError(f"{path}: a bundle folder needs {model_file}")
    return ResolvedModel(onnx_path, "bundle", session, shapes)
