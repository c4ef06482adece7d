"""`edge-search pareto`: the feasible Pareto set of a study, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

    from edge_search.pareto import ParetoPoint


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///edge-search.db)")
    p.add_argument("--json", action="store_true", help="print a JSON list for machines")


def load_study(name: str, storage_url: str | None) -> optuna.Study:
    """An existing study, or an input error listing the ones that exist; creates nothing."""
    import optuna

    from edge_search.errors import InputError
    from edge_search.study import open_existing_storage

    storage = open_existing_storage(storage_url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise InputError(f"no study named '{name}' (studies: {', '.join(names) or 'none'})") from None


def print_front(points: Sequence[ParetoPoint]) -> None:
    from rich.console import Console
    from rich.table import Table

    from edge_search.pareto import latency_label

    if not points:
        print("no feasible trial on the front")
        return
    names = list(points[0].values)
    deploy_keys = sorted({k for p in points for k in p.params if k.startswith("deploy.")})
    train_keys = sorted({k for p in points for k in p.params if k.startswith("train.")})
    always = ("deploy.execution_provider", "deploy.precision")  # where it runs and how, even when all agree
    varying = [k for k in deploy_keys + train_keys
               if k in always or len({str(p.params.get(k)) for p in points}) > 1]
    confirmed = any(p.latency and p.latency["source"] == "confirmed" for p in points)
    emulated = any(p.latency_source == "emulated" for p in points)
    caption = ("latency PREDICTED (emulated), not measured: the interval is the device profile's calibrated "
               "error band" if emulated else "latency measured: the interval is where a fresh measurement lands"
               + (" (confirmed: re-measured in interleaved rounds)" if confirmed else ""))
    table = Table(title="Pareto front (feasible" + (", latency confirmed)" if confirmed else ")"), caption=caption)
    table.add_column("trial", justify="right")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("latency_source")
    table.add_column("latency 95% interval (ms)", justify="right")
    for k in varying:
        table.add_column(k.split(".", 1)[1])
    for p in sorted(points, key=lambda p: p.values[names[-1]]):
        row = [str(p.trial), *(f"{p.values[n]:.4g}" for n in names), latency_label(p.latency_source), _interval(p),
               *(_short(p.params.get(k) if p.sampled is None or k in p.sampled else None) for k in varying)]
        table.add_row(*row)
    Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None).print(table)


def _interval(p: ParetoPoint) -> str:
    """``[0.61, 0.66] confirmed`` / ``[0.5, 0.7] search`` (where the figure comes from)."""
    lat = p.latency or {}
    lo, hi = p.latency_interval_ms or (lat.get("ci_low_ms"), lat.get("ci_high_ms"))
    if lo is None or hi is None:
        return ""
    flag = " !" if any(w.startswith(("contended", "unstable")) for w in lat.get("warnings") or []) else ""
    return f"[{lo:.4g}, {hi:.4g}] {lat.get('source', '')}{flag}"


def _short(v: object) -> str:
    """A knob's value; ``-`` where the knob does not apply to that configuration (e.g. int8 knobs on fp32)."""
    if v is None:
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from edge_search.pareto import pareto_points

    study = load_study(args.study, args.storage)
    points = pareto_points(study)
    if args.json:
        print(json.dumps([p.to_json() for p in points], indent=2))
    else:
        print_front(points)
    return 0
