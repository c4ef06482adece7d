"""Shared plumbing of the search benchmarks (sample efficiency, multi-fidelity, cost, peer comparison).

Not a benchmark itself: result files, figures, the hypervolume of a set of objective values, and
the grid of a discrete space evaluated once for real through `Pipeline` (see `evaluate_grid`).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / ".work"
"""Caches, Optuna/MLflow stores of the benchmark runs (git-ignored; delete to start from scratch)."""


def host_info() -> dict[str, Any]:
    import onnxruntime as ort
    import optuna

    return {"cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "optuna": optuna.__version__,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "at": time.strftime("%Y-%m-%d %H:%M:%S")}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_json(name: str, data: Mapping[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def write_csv(name: str, rows: Sequence[Mapping[str, Any]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return path


def write_figure(name: str, fig: Any) -> Path:
    """One self-contained HTML file per benchmark (plotly.js embedded: it opens offline).

    The files are ~4.5 MB each, so `benchmarks/.gitignore` keeps them out of git; rerunning the
    script (or `--figures-only` where a script has it) regenerates them from the JSON results.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.html"
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


# -- hypervolume ----------------------------------------------------------------------------------


def hypervolume(losses: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume of minimised `losses` up to `reference`: the dashboards' own helper (which
    wraps Optuna's private `optuna._hypervolume`), so the benchmark and the report agree."""
    from edge_search.dashboards.data import hypervolume as hv

    return hv(losses, reference)


def to_losses(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    return [-float(v) if d == "maximize" else float(v) for v, d in zip(values, directions, strict=True)]


def hypervolume_curve(points: Sequence[Sequence[float] | None], directions: Sequence[str],
                      reference: Sequence[float]) -> list[float]:
    """Hypervolume after each point (None: an infeasible/uncounted point) with a fixed reference."""
    ref = np.array(to_losses(reference, directions))
    front: list[np.ndarray] = []
    current = 0.0
    out: list[float] = []
    for vals in points:
        if vals is not None:
            p = np.array(to_losses(vals, directions))
            if not any(np.all(q <= p) for q in front):
                front = [q for q in front if not np.all(p <= q)] + [p]
                current = hypervolume(np.array(front), ref)
        out.append(current)
    return out


# -- discrete grids, evaluated once for real --------------------------------------------------------


def grid_configs(space: Any, cores: int) -> list[dict[str, dict[str, Any]]]:
    """Every configuration of a space whose knobs are all `choices` or fixed (honouring `when`), in
    the same shape `suggest_config` returns."""

    def section(knobs: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        items = list(knobs.items())

        def rec(i: int, acc: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if i == len(items):
                yield dict(acc)
                return
            name, spec = items[i]
            if not spec.condition_holds(acc):
                yield from rec(i + 1, acc)
                return
            if spec.type == "fixed":
                values: Sequence[Any] = [spec.value]
            elif spec.type == "categorical":
                values = list(spec.choices)
            elif spec.type == "int" and spec.step in (None, 1):
                high = cores if spec.high == "cores" else int(spec.high)
                values = list(range(int(spec.low), high + 1))
            else:
                raise ValueError(f"knob {name}: a grid needs choices, a fixed value or an int range")
            for v in values:
                yield from rec(i + 1, {**acc, name: v})

        yield from rec(0, {})

    return [{"train": t, "deploy": d} for t, d in itertools.product(section(space.train), section(space.deploy))]


def config_key(config: Mapping[str, Mapping[str, Any]]) -> str:
    return json.dumps({s: dict(sorted(config[s].items())) for s in ("train", "deploy")}, sort_keys=True)


def evaluate_grid(space_path: Path, cache_dir: Path, max_measure_s: float, precision_target: float,
                  log_every: int = 10) -> list[dict[str, Any]]:
    """Evaluate every configuration of the space once for real (train, transforms, evaluation and a
    measurement in a pinned worker on `host`) through edge-search's own `Pipeline` and artifact
    cache; returns one row per configuration: its key, every metric, stage timings, cache hits."""
    from edge_search.cache import ArtifactCache
    from edge_search.config import DeployConfig, TrialConfig
    from edge_search.devices import create_device, thread_cores
    from edge_search.devices.profile import get_profile
    from edge_search.pipeline import Pipeline
    from edge_search.space import load_space
    from edge_search.tasks import create_task

    space = load_space(space_path)
    profile = get_profile("host", [])
    task = create_task(space.task.name, space.task.options)
    device = create_device(profile)
    pipeline = Pipeline(task, device, profile, ArtifactCache(cache_dir), seed=space.seed,
                        precision_target=precision_target, max_measure_s=max_measure_s)
    configs = grid_configs(space, thread_cores(profile))
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for i, cfg in enumerate(configs):
            config = TrialConfig(train=cfg["train"], deploy=DeployConfig(**cfg["deploy"]))
            t = time.perf_counter()
            res = pipeline.evaluate(config)
            rows.append({"key": config_key(cfg), **{f"train.{k}": v for k, v in cfg["train"].items()},
                         **{f"deploy.{k}": v for k, v in cfg["deploy"].items()},
                         **res.metrics, "trial_s": time.perf_counter() - t,
                         **{f"time_{k}_s": v for k, v in res.timings.items()},
                         "measure_cached": res.cache_hits.get("measure", False),
                         "latency_stop": res.latency.stop_reason, "latency_cv": res.latency.cv})
            if (i + 1) % log_every == 0 or i + 1 == len(configs):
                print(f"  grid {space.name}: {i + 1}/{len(configs)} evaluated, {time.perf_counter() - t0:.0f} s, "
                      f"load {loadavg()[0]}", flush=True)
    finally:
        device.close()
    return rows


def load_grid_csv(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        conv: dict[str, Any] = {}
        for k, v in r.items():
            try:
                conv[k] = float(v)
            except ValueError:
                conv[k] = v
        out.append(conv)
    return out


def run_lookup_study(space: Any, table: Mapping[str, Mapping[str, Any]], sampler: str, seed: int,
                     n_trials: int, cores: int, mode: str = "after") -> list[list[float]]:
    """A real Optuna study with edge-search's sampler (`make_sampler`) and the space's own
    suggestions (`suggest_config`), whose objective returns the **measured** values of the sampled
    configuration from `table` (the grid evaluated once for real). Returns the objective values of
    the trials that count, in order (at most `n_trials`; fewer when the grid is exhausted).

    `mode` ``before``: as edge-search behaved before issue 14 (a repeat proposal is evaluated from
    the cache and counts as a trial; no first configurations). ``distinct``: repeats handled as
    today, no first configurations (plain random search over distinct configurations, for one).
    ``after``: as the embedded driver
    (`edge_search.drivers.optuna.run_optuna`) behaves now: the study starts with the informative
    first configurations of `edge_search.seeds`; a repeat proposal is told infeasible with the
    original's values (constraint ``duplicate`` = 1, as `StudySession.record_duplicate`) and does not
    count; after 10 repeats in a row an unseen configuration is enqueued; the run ends when every
    configuration has been seen. The logic is mirrored here (the lookup has no `Pipeline`); the
    driver itself is tested in `tests/drivers/test_ledger.py`."""
    import random

    import optuna

    from edge_search.samplers import make_sampler
    from edge_search.seeds import first_configurations
    from edge_search.space import sampled_params, suggest_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = space.objective_names
    study = optuna.create_study(directions=space.directions,
                                sampler=make_sampler(sampler, seed, len(names)))
    out: list[list[float]] = []
    if mode == "before":
        while len(out) < n_trials:
            trial = study.ask()
            row = table[config_key(suggest_config(space, trial, cores))]
            vals = [float(row[n]) for n in names]
            study.tell(trial, vals)
            out.append(vals)
        return out

    grid = {config_key(c): c for c in grid_configs(space, cores)}
    if mode == "after":
        for s in first_configurations(space, cores, key=config_key, limit=max(1, n_trials // 4)):
            study.enqueue_trial(s.params)
    seen: dict[str, list[float]] = {}
    rng = random.Random(seed)
    repeats = 0
    while len(out) < n_trials and len(seen) < len(grid):
        if repeats >= 10:
            repeats = 0
            unseen = [k for k in grid if k not in seen]
            study.enqueue_trial(sampled_params(space, grid[rng.choice(unseen)]))
        trial = study.ask()
        key = config_key(suggest_config(space, trial, cores))
        if key in seen:
            repeats += 1
            trial.set_constraint("duplicate", 1.0)
            study.tell(trial, seen[key])
            continue
        repeats = 0
        vals = [float(table[key][n]) for n in names]
        trial.set_constraint("duplicate", 0.0)
        study.tell(trial, vals)
        seen[key] = vals
        out.append(vals)
    return out
