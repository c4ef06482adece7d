"""`--sampler` names: one table, every name builds an Optuna sampler, an unknown one is an input error."""

from __future__ import annotations

import optuna
import pytest

from edge_search.errors import InputError
from edge_search.samplers import SAMPLERS, make_sampler


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_name_builds_a_seeded_optuna_sampler(name: str) -> None:
    sampler = make_sampler(name, seed=3, n_objectives=2)
    assert isinstance(sampler, optuna.samplers.BaseSampler)


def test_tpe_is_the_default_and_unknown_names_are_input_errors() -> None:
    assert SAMPLERS[0] == "tpe"
    with pytest.raises(InputError, match=r"unknown sampler 'cmaes' \(known: tpe, random, nsga2, nsga3, gp\)"):
        make_sampler("cmaes", 0, 2)
