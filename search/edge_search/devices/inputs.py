"""Input feeds for a measurement, built from a model's input signature.

Each graph input gets seeded random data of its declared element type and shape. A dimension
that the model leaves symbolic (``batch``, ``N``, unknown) needs an explicit shape
(``--shape name=1,3,224,224``); without one, `InputError` names the input and the dimension.
Explicit shapes must agree with every static dimension the model declares.

Random data: floats are standard normal; integers are drawn from ``[0, int_high)`` (default 2, valid
as token ids, masks or class indices of any model); ``uint8`` spans ``[0, 256)``; ``bool`` is a
fair coin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_search.errors import InputError

#: ONNX Runtime type strings -> numpy dtypes.
ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(bool)": np.bool_,
}

#: ONNX TensorProto element types -> ORT type strings.
_ONNX_ELEM_TO_ORT: dict[int, str] = {
    1: "tensor(float)",
    10: "tensor(float16)",
    11: "tensor(double)",
    7: "tensor(int64)",
    6: "tensor(int32)",
    5: "tensor(int16)",
    3: "tensor(int8)",
    2: "tensor(uint8)",
    4: "tensor(uint16)",
    9: "tensor(bool)",
}

Dim = int | str | None
"""A declared dimension: a size, a symbol (``"batch"``) or unknown (None)."""


@dataclass(frozen=True)
class InputSpec:
    """One graph input as the model declares it."""

    name: str
    type: str
    """ONNX Runtime type string, e.g. ``tensor(float)``."""
    dims: tuple[Dim, ...]

    @property
    def is_static(self) -> bool:
        """True when every dimension is a fixed non-negative size."""
        return all(isinstance(d, int) and d >= 0 for d in self.dims)


def specs_from_session(session: Any) -> list[InputSpec]:
    """Input specs of an ``onnxruntime.InferenceSession`` (its ``get_inputs()``)."""
    specs = []
    for node in session.get_inputs():
        dims = tuple(d if isinstance(d, int | str) or d is None else None for d in node.shape)
        specs.append(InputSpec(node.name, node.type, dims))
    return specs


def specs_from_onnx(model_path: Path) -> list[InputSpec]:
    """Input specs read from an ONNX file with the ``onnx`` package (initializers excluded)."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except FileNotFoundError:
        raise InputError(f"{model_path}: no such model file") from None
    except Exception as err:  # DecodeError and friends: not a protobuf
        raise InputError(f"{model_path}: not a valid ONNX model ({type(err).__name__})") from None
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        specs.append(InputSpec(inp.name, _ONNX_ELEM_TO_ORT.get(tt.elem_type, f"elem_type {tt.elem_type}"),
                               tuple(dims)))
    return specs


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``name=1,3,224,224`` (``x`` also accepted as separator) into (name, shape)."""
    name, sep, dims = text.partition("=")
    name = name.strip()
    if not sep or not name or not dims.strip():
        raise InputError(f"--shape {text!r}: expected NAME=D1,D2,... e.g. input=1,3,224,224")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise InputError(f"--shape {text!r}: dimensions must be integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"--shape {text!r}: dimensions must be positive integers")
    return name, shape


def resolve_shapes(specs: Sequence[InputSpec],
                   shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every input: the declared one, with `shapes` filling or overriding it.

    Raises `InputError` for a shape given for an unknown input, a rank or static-size mismatch,
    and a dynamic dimension left without an explicit shape.
    """
    known = {s.name for s in specs}
    unknown = sorted(set(shapes) - known)
    if unknown:
        raise InputError(f"--shape given for unknown input(s) {', '.join(unknown)}; "
                         f"model inputs: {', '.join(s.name for s in specs) or '(none)'}")
    out: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if spec.name in shapes:
            given = tuple(int(d) for d in shapes[spec.name])
            if len(given) != len(spec.dims):
                raise InputError(f"input '{spec.name}': shape {_fmt(given)} has rank {len(given)}, "
                                 f"the model declares rank {len(spec.dims)} {_fmt(spec.dims)}")
            for i, (g, d) in enumerate(zip(given, spec.dims, strict=True)):
                if isinstance(d, int) and d >= 0 and g != d:
                    raise InputError(f"input '{spec.name}': dimension {i} is fixed to {d} by the model, "
                                     f"--shape gives {g}")
                if g <= 0:
                    raise InputError(f"input '{spec.name}': dimension {i} must be positive, got {g}")
            out[spec.name] = given
            continue
        dynamic = [(i, d) for i, d in enumerate(spec.dims) if not (isinstance(d, int) and d >= 0)]
        if dynamic:
            i, d = dynamic[0]
            label = f"'{d}'" if isinstance(d, str) and d else "unknown"
            example = ",".join(str(x) if isinstance(x, int) and x >= 0 else "N" for x in spec.dims)
            raise InputError(f"input '{spec.name}' has a dynamic dimension {i} ({label}) in "
                             f"{_fmt(spec.dims)}; give its shape with --shape {spec.name}={example}")
        out[spec.name] = tuple(int(d) for d in spec.dims if isinstance(d, int))
    return out


def random_array(dtype: type[np.generic], shape: tuple[int, ...], rng: np.random.Generator,
                 int_high: int = 2) -> np.ndarray:
    """Seeded random data of `dtype` and `shape` (see the module docstring for the ranges)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if dt.kind == "f":
        return rng.standard_normal(size=shape).astype(dt)
    if dt == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if dt.kind in "iu":
        return rng.integers(0, int_high, size=shape).astype(dt)
    raise InputError(f"cannot generate inputs of dtype {dt}")  # pragma: no cover - map is closed


def build_feeds(specs: Sequence[InputSpec], shapes: Mapping[str, Sequence[int]] | None = None,
                seed: int = 0, int_high: int = 2) -> dict[str, np.ndarray]:
    """Input feeds (name -> array) for `specs`, with `shapes` for the dynamic dimensions."""
    concrete = resolve_shapes(specs, shapes or {})
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise InputError(f"input '{spec.name}' has type {spec.type}, which edge-search cannot generate; "
                             f"supported: {', '.join(sorted(ORT_DTYPES))}")
        feeds[spec.name] = random_array(dtype, concrete[spec.name], rng, int_high)
    return feeds


def _fmt(dims: Iterable[Dim]) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"
