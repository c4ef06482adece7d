"""Importing torchvision beside the CPU build of torch (see `import_torchvision`).

Its own module so that `reference_suite` and `suite_archs` both use it without importing each other.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from edge_search.errors import MissingDependency


def import_torchvision() -> ModuleType:
    """Import torchvision, tolerating compiled operators that do not match the installed torch.

    torchvision 0.28.0 (the release built for torch 2.13.0) is published on PyPI as a CUDA build; beside
    the CPU build of torch its C++ extension does not register its operators, and ``import torchvision``
    fails with ``RuntimeError: operator torchvision::nms does not exist`` while registering the
    operators' fake (meta) kernels. The suite needs only torchvision's pure-Python model definitions
    (no nms/roi_align), so: try a plain import first (a matching build imports normally); only on that
    error, drop the half-imported modules and import again with ``torch.library.register_fake`` made
    tolerant of a missing operator (the registration is skipped, the function is returned unchanged),
    then restore ``register_fake``. torchvision's detection ops stay unusable in that case; nothing
    here calls them.
    """
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        raise MissingDependency("torchvision", "torch") from None
    except RuntimeError as err:
        if "does not exist" not in str(err):
            raise
    return _import_tolerant()


def _import_tolerant() -> ModuleType:
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    original = torch.library.register_fake

    def tolerant(*args: Any, **kwargs: Any) -> Any:
        try:
            deco = original(*args, **kwargs)
        except RuntimeError:
            return lambda fn: fn

        def wrap(fn: Any) -> Any:
            try:
                return deco(fn)
            except RuntimeError:
                return fn

        return wrap

    torch.library.register_fake = tolerant
    try:
        return importlib.import_module("torchvision")
    finally:
        torch.library.register_fake = original


__all__ = ["import_torchvision"]
