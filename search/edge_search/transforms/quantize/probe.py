"""Per-channel statistics of a model's intermediate tensors over calibration samples (ONNX Runtime,
the tensors added as graph outputs): what bias correction and SmoothQuant need from the data."""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import helper

Stat = Literal["mean", "absmax"]


def channel_stats(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], tensors: dict[str, bool],
                  stat: Stat) -> dict[str, np.ndarray]:
    """`stat` of each tensor per channel over `feeds`: the channel is the last axis where
    `tensors[name]` is True (a MatMul's input), else axis 1 (NCHW); a 2-D tensor's last axis."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in have:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(tensors)
    acc: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed), strict=True):
            v = np.asarray(value, dtype=np.float64)
            flat = v.reshape(-1, v.shape[-1]) if tensors[name] or v.ndim == 2 else (
                np.moveaxis(v, 1, -1).reshape(-1, v.shape[1]))
            if stat == "mean":
                acc[name] = acc.get(name, 0) + flat.sum(axis=0)
                counts[name] = counts.get(name, 0) + flat.shape[0]
            else:
                cur = np.abs(flat).max(axis=0)
                acc[name] = np.maximum(acc[name], cur) if name in acc else cur
    if stat == "mean":
        return {name: acc[name] / max(counts[name], 1) for name in names}
    return acc
