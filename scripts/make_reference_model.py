#!/usr/bin/env python3
"""Write the reference ONNX model that `edge-search check` guards in CI, or a slowed-down variant.

The model is a chain of ``Gemm + Relu`` layers over ``x[batch, width]`` with fixed, seeded weights,
so every run of this script writes the same bytes (nothing binary is committed; CI generates it).
``--extra F`` adds a side branch ``x -> Gemm(width -> k) -> Relu`` (a second output) whose FLOPs
are ``F`` times those of the main chain: the model is then about ``F`` slower without any change
to the main output. Tests and ``benchmarks/check_sensitivity.py`` use it to make models genuinely
slower by a known amount of work.

Usage::

    python scripts/make_reference_model.py ci/reference.onnx
    python scripts/make_reference_model.py /tmp/slower.onnx --extra 0.10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: Defaults of the CI reference model: about 0.3 ms per inference on one core of the 2-core x86 CI VM, 2.1 MB.
LAYERS = 8
WIDTH = 256
BATCH = 64


def main_flops(layers: int = LAYERS, width: int = WIDTH, batch: int = BATCH) -> int:
    """Multiply-adds times two of the main chain."""
    return 2 * layers * batch * width * width


def build_reference_model(path: Path, *, layers: int = LAYERS, width: int = WIDTH, batch: int = BATCH,
                          extra: float = 0.0, seed: int = 0) -> Path:
    """Write the Gemm chain (plus a side branch of `extra` x its FLOPs when `extra` > 0) to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if layers < 1 or width < 1 or batch < 1 or extra < 0:
        raise ValueError("layers, width and batch must be positive and extra non-negative")
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(width, dtype=np.float32), f"b{i}")]
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}"))
        nodes.append(helper.make_node("Relu", [f"g{i}"], [out], name=f"relu{i}"))
        prev = out
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])]
    k = round(extra * layers * width)
    if k > 0:
        we = (rng.standard_normal((width, k)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(we, "w_extra"),
                  numpy_helper.from_array(np.zeros(k, dtype=np.float32), "b_extra")]
        nodes.append(helper.make_node("Gemm", ["x", "w_extra", "b_extra"], ["g_extra"], name="gemm_extra"))
        nodes.append(helper.make_node("Relu", ["g_extra"], ["extra"], name="relu_extra"))
        outputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [batch, k]))
    graph = helper.make_graph(nodes, "edge_search_reference",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edge-search scripts/make_reference_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and write the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("output", type=Path, help="where to write the .onnx file")
    parser.add_argument("--extra", type=float, default=0.0, metavar="F",
                        help="side-branch work as a fraction of the main chain's FLOPs (default: 0)")
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--batch", type=int, default=BATCH)
    args = parser.parse_args(argv)
    build_reference_model(args.output, layers=args.layers, width=args.width, batch=args.batch,
                          extra=args.extra)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
