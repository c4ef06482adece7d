"""Every third-party module the package imports is declared in pyproject.toml (a dependency or an
extra), so a clean install of the package and its extras can import all of it."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "search" / "edge_search"
INDIRECT = {
    "google": "protobuf: the message classes of onnx, which declares it",
    "starlette": "the framework fastapi is built on (the agent extra declares fastapi)",
}
"""Modules imported through the library that owns them, with the reason."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}


def _imported() -> dict[str, set[str]]:
    """Top-level third-party module -> the package files importing it."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top != "edge_search" and top not in sys.stdlib_module_names:
                    out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out


def test_every_imported_third_party_module_is_declared() -> None:
    declared = _declared()
    dists = md.packages_distributions()
    missing = {}
    for module, files in sorted(_imported().items()):
        if module in INDIRECT:
            continue
        candidates = {_norm(d) for d in dists.get(module, [module])}
        if not candidates & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert "pillow" in declared and "moocore" in declared
