"""The first trials of a new study: the configurations a user would try by hand, before the sampler.

A sampler starts from nothing: its first ten trials are random, and a random deployment
configuration is rarely the one a user would have tried first. So a new study is seeded (Optuna's
`enqueue_trial`) with informative configurations derived from the space, each one only with values
the space allows:

1. ONNX Runtime's default session: fp32, as many intra-op threads as the space allows (ORT's default
   uses every core), graph optimisation ``all``;
2. each other execution provider the space allows (a Jetson's GPU through CUDA or TensorRT), at fp16
   where that path runs it, else fp32: the first thing a user with a GPU tries;
3. each int8 precision the space allows at the most threads, per-channel where the space allows it,
   once per ``quant_format`` it allows; then any other precision at the most threads;
4. fp32 at each other thread count the space allows.

(Precisions and providers come before thread counts: with the seed budget a quarter of the trials,
a 24-trial search on a 4-core Jetson otherwise spent its six seeds on the CPU at four thread counts
and never tried int8 or the GPU.)

Every other deploy knob takes `DeployConfig`'s default where the space allows it, else the nearest
value it allows. Train knobs are left to the sampler (its first proposals are random): fixing them
to the task's defaults in every seed spends the first trials on one architecture. Measured on the
digits grid of `benchmarks/sample_efficiency.py` (TPE, 20 seeds, duplicates not counted): median
hypervolume share after 40 configurations 0.985 with the train knobs left free, 0.926 with them at
the defaults, against 0.968 for random search after 160. Seeds that cannot be deployed
(`Pipeline.check`) or that are one configuration (`Pipeline.config_key`) are dropped. The front
then starts at the baseline a user would otherwise tune by hand, and the sampler's model starts
from points that span precision and threads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_search.config import DEPLOY_KNOBS
from edge_search.space import KnobSpec, SearchSpace, knob_values, sampled_params

INT8 = ("int8-static", "int8-dynamic")


@dataclass(frozen=True)
class Seed:
    """One first configuration: why it is informative, and the Optuna params that propose it."""

    reason: str
    config: dict[str, dict[str, Any]]
    """``{"train": {}, "deploy": {...}}``: the deploy knobs as `suggest_config` returns them (train
    knobs are the sampler's)."""
    params: dict[str, Any]
    """The Optuna params to enqueue: the searched deploy knobs only."""


def allowed_values(spec: KnobSpec, cores: int) -> list[Any]:
    """The values a knob spec allows, for picking: every value of a set or an integer range
    (`space.knob_values`), the two bounds of a float range."""
    if spec.type == "float":
        assert spec.low is not None and spec.high is not None
        return [float(spec.low), float(cores if spec.high == "cores" else spec.high)]
    values = knob_values(spec, cores)
    assert values is not None  # only a float range can be continuous
    return values


def _contains(spec: KnobSpec, value: Any, cores: int) -> bool:
    if spec.type in ("fixed", "categorical"):
        return value in allowed_values(spec, cores)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    assert spec.low is not None and spec.high is not None
    high = cores if spec.high == "cores" else spec.high
    if not float(spec.low) <= float(value) <= float(high):
        return False
    if spec.type == "int":
        return float(value).is_integer() and (int(value) - int(spec.low)) % int(spec.step or 1) == 0
    return spec.step is None or abs(((value - spec.low) / spec.step) - round((value - spec.low) / spec.step)) < 1e-9


def _nearest(spec: KnobSpec, want: Any, cores: int) -> Any:
    """`want` if the spec allows it, else the allowed value nearest to it (the first, for non-numbers)."""
    if _contains(spec, want, cores):
        return want
    values = allowed_values(spec, cores)
    numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numeric and isinstance(want, int | float) and not isinstance(want, bool):
        return min(numeric, key=lambda v: (abs(v - want), v))
    return values[0]


def _section(knobs: Mapping[str, KnobSpec], defaults: Mapping[str, Any], wants: Mapping[str, Any],
             cores: int) -> dict[str, Any]:
    """One section of a configuration: `wants` where allowed, else the default, else the nearest
    allowed value; knobs whose `when` does not hold are left out (as `suggest_config` does)."""
    out: dict[str, Any] = {}
    for name, full in knobs.items():
        if not full.condition_holds(out):
            continue
        spec = full.narrowed(out, name, cores)
        if name in wants and _contains(spec, wants[name], cores):
            out[name] = wants[name]
        else:
            out[name] = _nearest(spec, defaults.get(name), cores)
    return out


def first_configurations(space: SearchSpace, cores: int, *,
                         key: Callable[[dict[str, dict[str, Any]]], str | None] | None = None,
                         limit: int | None = None) -> list[Seed]:
    """The informative first configurations of `space` (see the module docstring), in order.

    `key(config)` gives a configuration's identity (the train knobs at the task's defaults), or None
    when it cannot be deployed (the pipeline's `config_key` after its `check`); default: the knobs
    themselves. At most `limit`."""
    deploy_knobs = space.deploy
    threads_spec = deploy_knobs.get("intra_op_threads")
    threads = sorted({int(t) for t in allowed_values(threads_spec, cores)}, reverse=True) if threads_spec else [1]
    most = threads[0]
    precisions = allowed_values(deploy_knobs["precision"], cores) if "precision" in deploy_knobs else ["fp32"]
    formats = allowed_values(deploy_knobs["quant_format"], cores) if "quant_format" in deploy_knobs else [None]

    wanted: list[tuple[str, dict[str, Any]]] = []
    ort = {"precision": "fp32", "intra_op_threads": most, "graph_optimization": "all", "execution_mode": "sequential"}
    wanted.append(("ONNX Runtime's default session (fp32, every thread, graph optimisation all)", ort))
    provider_spec = deploy_knobs.get("execution_provider")
    for provider in allowed_values(provider_spec, cores) if provider_spec else []:
        if provider == DEPLOY_KNOBS["execution_provider"]:
            continue
        prec_spec = deploy_knobs.get("precision")
        offered = (allowed_values(prec_spec.narrowed({"execution_provider": provider}), cores) if prec_spec
                   else ["fp32"])
        precision = "fp16" if "fp16" in offered else "fp32"
        wanted.append((f"{provider} at {precision}", {**ort, "execution_provider": provider, "precision": precision}))
    thread_seeds = [(f"fp32 at {t} thread(s)", {**ort, "intra_op_threads": t}) for t in threads[1:]]
    for precision in [p for p in INT8 if p in precisions] + [p for p in precisions if p not in (*INT8, "fp32")]:
        for fmt in formats if precision == "int8-static" else [None]:
            want = {**ort, "precision": precision, "per_channel": True}
            label = f"{precision} per-channel"
            if fmt is not None:
                want["quant_format"] = fmt
                label += f" {fmt}"
            if precision not in INT8:
                label = precision
            wanted.append((f"{label} at {most} thread(s)", want))
    wanted += thread_seeds

    identity = key or (lambda c: json.dumps(c, sort_keys=True, default=str))
    seeds: list[Seed] = []
    seen: set[str] = set()
    for reason, want in wanted:
        config: dict[str, dict[str, Any]] = {"train": {}, "deploy": _section(deploy_knobs, DEPLOY_KNOBS, want, cores)}
        if config["deploy"].get("precision", "fp32") != want["precision"]:
            continue  # the space does not allow this precision after all (a `when`)
        k = identity(config)
        if k is None or k in seen:
            continue
        seen.add(k)
        seeds.append(Seed(reason, config, sampled_params(space, config, cores)))
        if limit is not None and len(seeds) >= limit:
            break
    return seeds
