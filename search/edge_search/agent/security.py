"""What the agent refuses: wrong tokens, and models that reach outside their own bytes.

A model is checked before any ONNX Runtime session sees it:

- it must parse as an ONNX `ModelProto`;
- no tensor anywhere (initializers, sparse initializers, constant attributes, subgraphs, local
  functions) may keep its data outside the model (``data_location: EXTERNAL`` or an
  ``external_data`` entry): that would make ONNX Runtime open a path the client chose;
- every node's op domain must be a standard one (`STANDARD_DOMAINS`: ONNX, ONNX-ML and ONNX
  Runtime's built-in contrib ops) or a function defined inside the model; any other domain is a
  custom op, which would need a custom-op library loaded from disk (domains that are only
  imported, with no node using them, load nothing and are let through);
- the model may not ask ONNX Runtime to load session options from itself (``ort_config``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_search.errors import EdgeSearchError, InputError

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview",
                              "ai.onnx.preview.training", "com.microsoft", "com.microsoft.nchwc",
                              "com.ms.internal.nhwc"})
"""Op domains ONNX Runtime implements itself; anything else needs a custom-op library."""


class ModelRejected(EdgeSearchError):
    """The agent will not load this model; the message says why (HTTP 422)."""


def tokens_match(given: str, expected: str) -> bool:
    """Compare a presented bearer token with the agent's, in constant time."""
    a = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    b = hashlib.sha256(expected.encode("utf-8")).digest()
    return hmac.compare_digest(a, b) and bool(expected)


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace stripped); `InputError` when missing or empty."""
    path = Path(path).expanduser()
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise InputError(f"{path}: cannot read the agent token: {err.strerror}") from None
    if len(token) < 16:
        raise InputError(f"{path}: the agent token must have at least 16 characters")
    return token


def ensure_token(path: Path) -> tuple[str, bool]:
    """Read the token in `path`, or write a new random one there (mode 0600); (token, created)."""
    path = Path(path).expanduser()
    if path.exists():
        return read_token(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def token_file_too_open(path: Path) -> bool:
    """True when other users may read the token file (group or world permissions)."""
    try:
        mode = Path(path).expanduser().stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def _tensors_of_graph(graph: Any) -> Iterator[tuple[str, Any]]:
    for t in graph.initializer:
        yield t.name, t
    for st in graph.sparse_initializer:
        yield st.values.name, st.values
        yield st.indices.name, st.indices
    for node in graph.node:
        yield from _tensors_of_nodes([node])


def _tensors_of_nodes(nodes: Any) -> Iterator[tuple[str, Any]]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield f"{node.name or node.op_type}.{attr.name}", attr.t
            for t in attr.tensors:
                yield f"{node.name or node.op_type}.{attr.name}", t
            if attr.HasField("sparse_tensor"):
                yield f"{node.name}.{attr.name}", attr.sparse_tensor.values
            for g in _subgraphs(attr):
                yield from _tensors_of_graph(g)


def _subgraphs(attr: Any) -> Iterator[Any]:
    if attr.HasField("g"):
        yield attr.g
    yield from attr.graphs


def _nodes_of_graph(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in _subgraphs(attr):
                yield from _nodes_of_graph(g)


def parse_model(data: bytes) -> Any:
    """Parse ONNX bytes into a `ModelProto` (no file is read); `ModelRejected` when they are not."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ModelRejected(f"not an ONNX model: {err}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelRejected("not an ONNX model: it has no graph nodes")
    return model


def check_model(data: bytes) -> Any:
    """Parse and check ONNX bytes (see the module docstring); returns the `ModelProto`."""
    from onnx import TensorProto

    model = parse_model(data)
    tensors = list(_tensors_of_graph(model.graph))
    for fn in model.functions:
        tensors.extend(_tensors_of_nodes(fn.node))
    for name, t in tensors:
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data) > 0:
            raise ModelRejected(f"tensor '{name}' references external data; send a model with its "
                                "weights inside it")
    local = {f.domain for f in model.functions}
    nodes = list(_nodes_of_graph(model.graph))
    for fn in model.functions:
        nodes.extend(fn.node)
    for node in nodes:
        if node.domain not in STANDARD_DOMAINS and node.domain not in local:
            raise ModelRejected(f"node '{node.name or node.op_type}' uses custom op domain "
                                f"'{node.domain}' (allowed: ONNX, ONNX-ML and ONNX Runtime's own ops)")
    for prop in model.metadata_props:
        if prop.key == "ort_config":
            raise ModelRejected("the model carries ONNX Runtime session options ('ort_config')")
    return model
