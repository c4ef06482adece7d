"""The search algorithms `--sampler` names: one table, read by the CLI (choices) and the study.

Imports Optuna only when a sampler is built, so the command table stays fast to load.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from edge_search.errors import InputError

if TYPE_CHECKING:
    import optuna


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                      n_startup_trials=10)


def _random(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _nsga2(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)


def _nsga3(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIIISampler(seed=seed, population_size=20)


def _gp(seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)


_BUILDERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe, "random": _random, "nsga2": _nsga2, "nsga3": _nsga3, "gp": _gp,
}

SAMPLERS: tuple[str, ...] = tuple(_BUILDERS)
"""Sampler names, default first: TPE (multivariate, grouped for conditional knobs)."""


def make_sampler(name: str, seed: int, n_objectives: int) -> optuna.samplers.BaseSampler:
    """Sampler by CLI name (`SAMPLERS`); an unknown name is an input error."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise InputError(f"unknown sampler '{name}' (known: {', '.join(SAMPLERS)})")
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return builder(seed)
