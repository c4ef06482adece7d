"""SmoothQuant (Xiao et al. 2023) for MatMuls with constant weights: move activation outliers into
the weights before int8 quantisation.

For a MatMul y = x W (W: K x N constant), each input channel j is divided by s_j and the j-th
row of W multiplied by it (exact in float): s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), with
max|x_j| over the calibration samples and max|W_j| over every MatMul that reads x. The division
is folded into a LayerNormalization's scale and bias when the MatMuls are its only readers, else
it is one Mul node in front of them.

ONNX Runtime's quantiser has a `SmoothQuant` option, but it imports
`neural_compressor.adaptor.ox_utils.smooth_quant` from neural-compressor 2.x, which pins
numpy < 2 (neural-compressor 3.x no longer ships the ONNX adaptor), so it cannot be installed next to
this project's stack; the transform is written here on the graph instead, after the paper.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper as nh

from edge_search.transforms.quantize.probe import channel_stats

log = logging.getLogger(__name__)

SCALE_RANGE = (1e-4, 1e4)
"""Smoothing factors are clipped to this range (a dead channel must not blow up a weight row)."""


def smooth(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], alpha: float) -> int:
    """Apply SmoothQuant with migration strength `alpha` to `model` in place; returns the number of
    input tensors smoothed (each shared by one or more MatMuls)."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {o: n for n in model.graph.node for o in n.output}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if (node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2
                and node.input[0] not in inits):
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return 0
    xmax = channel_stats(model, feeds, dict.fromkeys(groups, True), "absmax")
    new_nodes: list[tuple[int, onnx.NodeProto]] = []
    position = {id(n): i for i, n in enumerate(model.graph.node)}
    for x, mats in groups.items():
        weights = [nh.to_array(inits[m.input[1]]).astype(np.float64) for m in mats]
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        ok = (xmax[x] > 0) & (wmax > 0)
        s = np.ones_like(wmax)
        s[ok] = np.clip(xmax[x][ok] ** alpha / wmax[ok] ** (1 - alpha), *SCALE_RANGE)
        for m, w in zip(mats, weights, strict=True):
            name = f"{m.input[1]}_smoothed_{m.name}"
            model.graph.initializer.append(nh.from_array((w * s[:, None]).astype(np.float32), name))
            m.input[1] = name
        ln = producer.get(x)
        readers = consumers.get(x, [])
        if ln is not None and ln.op_type == "LayerNormalization" and len(readers) == len(mats) and all(
                i in inits for i in ln.input[1:3]) and len(ln.input) >= 3:
            for i in (1, 2):
                v = nh.to_array(inits[ln.input[i]]).astype(np.float64) / s
                fresh = f"{ln.input[i]}_smoothed"
                model.graph.initializer.append(nh.from_array(v.astype(np.float32), fresh))
                ln.input[i] = fresh
            continue
        inv = f"{x}_smooth_inv"
        out = f"{x}_smoothed"
        model.graph.initializer.append(nh.from_array((1.0 / s).astype(np.float32), inv))
        mul = helper.make_node("Mul", [x, inv], [out], name=f"{x}_SmoothQuant_Mul")
        for m in mats:
            m.input[0] = out
        new_nodes.append((min(position[id(m)] for m in mats), mul))
    nodes = list(model.graph.node)
    for index, mul in sorted(new_nodes, key=lambda t: -t[0]):
        nodes.insert(index, mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    log.info("SmoothQuant (alpha %.2f): %d MatMul inputs smoothed", alpha, len(groups))
    return len(groups)
