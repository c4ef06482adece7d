"""Real ONNX models for the device tests, built with onnx.helper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def gemm_chain(path: Path, *, layers: int = 4, width: int = 256, batch: int | str = 8, seed: int = 0) -> Path:
    """x[batch, width] -> (Gemm + Relu) x layers -> y; `batch` as a string makes that dimension dynamic."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "x"
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
                                    f"w{i}")
        b = numpy_helper.from_array(np.zeros(width, dtype=np.float32), f"b{i}")
        inits += [w, b]
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"], name=f"gemm{i}"))
        nodes.append(helper.make_node("Relu", [f"g{i}"], [out], name=f"relu{i}"))
        prev = out
    graph = helper.make_graph(nodes, "gemm_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


GemmChain = Callable[..., Path]


@pytest.fixture(scope="session")
def make_gemm_chain() -> GemmChain:
    """The `gemm_chain` builder, for tests that need a model of their own size."""
    return gemm_chain


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ~1 ms static Gemm chain, the same with a dynamic batch, and a corrupt file."""
    d = tmp_path_factory.mktemp("models")
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model\xff\xfe" * 10)
    return {
        "static": gemm_chain(d / "static.onnx", layers=6, width=256, batch=16),
        "dynamic": gemm_chain(d / "dynamic.onnx", layers=2, width=64, batch="batch"),
        "corrupt": corrupt,
    }


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests take leases in a lock folder of their own (shared by this test session).

    Hermetic and fast: they never queue behind a real measurement (a calibration) on this machine.
    The price: their workers may overlap with such a measurement and disturb it.
    """
    d = tmp_path_factory.getbasetemp() / "locks"
    monkeypatch.setenv("EDGE_SEARCH_LOCK_DIR", str(d))
    return d
