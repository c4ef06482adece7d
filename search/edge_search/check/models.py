"""What a check measures besides latency: a model's size, and its accuracy on a task's split or an
.npz file. (An ONNX file or a bundle folder is resolved by `edge_search.bundle.resolve`.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_search.check.budgets import EvaluationSpec
from edge_search.errors import InputError


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
