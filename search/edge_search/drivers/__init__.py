"""Drivers decide which configurations to evaluate: Optuna (embedded, default) or Ray Tune.

`DRIVERS` maps a ``--backend`` name to the lazy import path of a function implementing `Driver`
(see `edge_search.drivers.base`); a back-end's heavy dependency (Ray) is imported only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edge_search.errors import InputError

if TYPE_CHECKING:
    from edge_search.drivers.base import Driver

#: ``--backend`` name -> "module:function" implementing `Driver`.
DRIVERS: dict[str, str] = {
    "optuna": "edge_search.drivers.optuna:run_optuna",
    "ray": "edge_search.drivers.ray:run_ray",
}


def get_driver(name: str) -> Driver:
    """The driver registered as `name`; an unknown name is an input error."""
    if name not in DRIVERS:
        raise InputError(f"unknown backend '{name}' (known: {', '.join(DRIVERS)})")
    module_name, _, attr = DRIVERS[name].partition(":")
    driver: Driver = getattr(importlib.import_module(module_name), attr)
    return driver


__all__ = ["DRIVERS", "get_driver"]
