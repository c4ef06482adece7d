"""Keep the layers that should stay float32 in float32 when ONNX Runtime loads the model.

ONNX Runtime (1.21 and later) has a level-1 graph transformer, `WeightBiasQuantization`, that
quantises the float weights of every Conv/ConvTranspose/Gemm whose input comes from a
DequantizeLinear with a scalar scale: *per-tensor* symmetric int8, at session load, at every
optimisation level but "disabled". In a QDQ or QOperator model from ORT's quantiser, every layer
left in float32 (`keep_fp32_top_k`, `keep_fp32`, the sensitivity analysis' variants) reads a
DequantizeLinear output, so the fallback silently ran with per-tensor int8 weights: on pretrained
EfficientNet-Lite0 keeping one depthwise conv "in fp32" cut agreement with fp32 from 0.97 to 0.88
(per-tensor int8 is what wrecks depthwise convs; same model with optimisation disabled: 0.99).

The transformer only acts on a *scalar* input scale. So each float layer fed by such a
DequantizeLinear gets its own copy of it with the scale and zero point repeated per input channel
(`axis` 1): the same values, dequantised identically, that the transformer leaves alone. A session
option (`disabled_optimizers`) would only protect sessions edge-search opens, not the user's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper as nh

log = logging.getLogger(__name__)

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm")
"""The ops whose float weights ORT's `WeightBiasQuantization` quantises."""


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _input_channels(node: onnx.NodeProto, weight: onnx.TensorProto) -> tuple[int, int] | None:
    """(axis of input 0 that holds its channels, how many) for a Conv/ConvTranspose/Gemm."""
    dims = list(weight.dims)
    if len(dims) < 2:
        return None
    if node.op_type == "Conv":
        return 1, dims[1] * _attr(node, "group", 1)
    if node.op_type == "ConvTranspose":
        return 1, dims[0]
    k = dims[0] if _attr(node, "transB", 0) == 0 else dims[1]
    return (0 if _attr(node, "transA", 0) else 1), k


def shield_float_nodes(model: onnx.ModelProto, names: Iterable[str]) -> int:
    """Give every Conv/ConvTranspose/Gemm of `names` that has float initializer weights and reads a
    scalar-scale DequantizeLinear its own per-channel copy of that DequantizeLinear (in place), so
    ONNX Runtime does not quantise its weights at load. Returns how many were shielded."""
    wanted = set(names)
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    inserted: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.name not in wanted or node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        dq = producer.get(node.input[0])
        if (weight is None or weight.data_type != onnx.TensorProto.FLOAT or dq is None
                or dq.op_type != "DequantizeLinear"):
            continue
        scale = inits.get(dq.input[1])
        zero = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        channels = _input_channels(node, weight)
        if (scale is None or nh.to_array(scale).size != 1 or channels is None
                or (zero is not None and nh.to_array(zero).size != 1)):
            continue
        axis, n = channels
        base = f"{node.name}_float_input"
        model.graph.initializer.append(nh.from_array(np.full(n, nh.to_array(scale).item(), nh.to_array(scale).dtype),
                                                     f"{base}_scale"))
        inputs = [dq.input[0], f"{base}_scale"]
        if zero is not None:
            z = nh.to_array(zero)
            model.graph.initializer.append(nh.from_array(np.full(n, z.item(), z.dtype), f"{base}_zero_point"))
            inputs.append(f"{base}_zero_point")
        inserted[node.name] = helper.make_node("DequantizeLinear", inputs, [base], name=f"{base}_DequantizeLinear",
                                               axis=axis)
        node.input[0] = base
    if inserted:
        nodes = []
        for node in model.graph.node:
            if node.name in inserted:
                nodes.append(inserted[node.name])
            nodes.append(node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        log.info("float32 layers shielded from ONNX Runtime's load-time weight quantisation: %d", len(inserted))
    return len(inserted)
