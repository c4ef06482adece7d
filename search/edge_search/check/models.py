"""What a check measures: an ONNX file, or a bundle folder with the session knobs and input shapes
its manifest records; its size, and its accuracy on a task's split or an .npz file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ValidationError

from edge_search.bundle.runtime import (
    MODEL_FILE,
    manifest_model_file,
    manifest_session_options,
    manifest_shapes,
    read_manifest,
)
from edge_search.check.budgets import EvaluationSpec
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


def resolve_model(path: Path) -> ResolvedModel:
    """An ONNX file as it is; a bundle folder as its model plus the manifest's session knobs and shapes.

    The manifest (the bundle format of `edge_search.bundle.runtime`: ``bundle.json`` as
    `edge-search export` writes it, or ``manifest.json``) gives
    the model file (``model.file``, default ``model.onnx``), the session knobs (``session_options``
    or ``session``: the `SessionKnobs` fields; others such as ``allow_spinning`` are ignored) and
    the measured input shapes (``inputs``). Raises `InputError` for a folder without a model.
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


def model_size_mb(path: Path) -> float:
    """Size of the ONNX file in MB (10^6 bytes), as the search reports ``size_mb``."""
    return path.stat().st_size / 1e6


def evaluate_accuracy(onnx_path: Path, spec: EvaluationSpec) -> float:
    """Top-1 accuracy of the model on a task's held-out split or on an .npz file (``x``, ``y``)."""
    if spec.task is not None:
        from edge_search.tasks import create_task

        return float(create_task(spec.task).evaluate(onnx_path, spec.batch_size)["accuracy"])
    assert spec.data is not None
    import onnxruntime as ort

    try:
        with np.load(spec.data) as data:
            x, y = np.asarray(data[spec.x_key]), np.asarray(data[spec.y_key])
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{spec.data}: cannot read keys '{spec.x_key}' and '{spec.y_key}': {err}") from None
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"{spec.data}: x and y must be non-empty and of the same length")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    chunk = fixed or spec.batch_size
    preds: list[np.ndarray] = []
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk].astype(np.float32)
        n = len(xb)
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.zeros((fixed - n, *xb.shape[1:]), dtype=xb.dtype)])
        out = np.asarray(sess.run(None, {inp.name: np.ascontiguousarray(xb)})[0])
        preds.append(out[:n].argmax(axis=1))
    return float((np.concatenate(preds) == y).mean())
