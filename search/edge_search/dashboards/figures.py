"""Plotly figures drawn from a `StudyData` (see `data.py`); each function draws one figure.

Everything here is SVG except the parallel coordinates (plotly's `parcoords` is WebGL-only), so
the report renders in any browser, headless ones included.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from edge_search.dashboards.data import StudyData, TrialPoint

FRONT = "#d62728"
DOMINATED = "#7f7f7f"
INFEASIBLE = "#ff9896"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def hover_text(t: TrialPoint) -> str:
    """Hover label: the trial, its objectives, feasibility and every knob."""
    lines = [f"<b>trial {t.number}</b>" + (" (Pareto)" if t.on_front else ""),
             *(f"{k} = {_fmt(v)}" for k, v in t.values.items()),
             f"feasible = {str(t.feasible).lower()}", f"latency source = {t.latency_source}",
             *(f"{k} = {_fmt(v)}" for k, v in sorted(t.params.items()))]
    return "<br>".join(lines)


def _groups(data: StudyData) -> list[tuple[str, list[TrialPoint], dict[str, Any]]]:
    return [
        ("Pareto front", [t for t in data.trials if t.on_front],
         {"color": FRONT, "size": 10, "symbol": "diamond", "line": {"width": 1, "color": "black"}}),
        ("dominated", [t for t in data.trials if t.feasible and not t.on_front],
         {"color": DOMINATED, "size": 7, "opacity": 0.7}),
        ("infeasible", [t for t in data.trials if not t.feasible],
         {"color": INFEASIBLE, "size": 7, "symbol": "x"}),
    ]


def _axis_title(data: StudyData, name: str) -> str:
    d = data.directions[data.objectives.index(name)]
    return f"{name} ({'higher' if d == 'maximize' else 'lower'} is better)"


def pareto_front(data: StudyData) -> go.Figure:
    """Objectives against each other; front, dominated and infeasible trials as separate traces.

    Two objectives: one scatter (the front joined by a step line). Three or more: a scatter
    matrix of every pair of objectives, drawn as SVG subplots.
    """
    names = data.objectives
    if len(names) < 2:
        fig = go.Figure()
        for label, pts, marker in _groups(data):
            fig.add_trace(go.Scatter(x=[t.number for t in pts], y=[t.values[names[0]] for t in pts],
                                     mode="markers", name=label, marker=marker,
                                     text=[hover_text(t) for t in pts], hoverinfo="text"))
        fig.update_layout(title="Objective by trial", xaxis_title="trial",
                          yaxis_title=_axis_title(data, names[0]))
        return fig
    pairs = list(combinations(range(len(names)), 2))
    n = len(names) - 1
    fig = make_subplots(rows=n, cols=n, horizontal_spacing=0.08, vertical_spacing=0.08)
    for label, pts, marker in _groups(data):
        for k, (i, j) in enumerate(pairs):
            # x: the later objective (latency, size), y: the earlier one (accuracy); lower triangle.
            row, col = j, i + 1
            fig.add_trace(go.Scatter(
                x=[t.values[names[j]] for t in pts], y=[t.values[names[i]] for t in pts], mode="markers",
                name=label, legendgroup=label, showlegend=k == 0, marker=marker,
                text=[hover_text(t) for t in pts], hoverinfo="text"), row=row, col=col)
            fig.update_xaxes(title_text=names[j], row=row, col=col)
            fig.update_yaxes(title_text=names[i], row=row, col=col)
    if len(names) == 2:
        front = sorted(data.front, key=lambda t: t.values[names[1]])
        fig.add_trace(go.Scatter(x=[t.values[names[1]] for t in front], y=[t.values[names[0]] for t in front],
                                 mode="lines", line={"shape": "hv", "color": FRONT, "width": 1},
                                 hoverinfo="skip", showlegend=False))
        fig.update_xaxes(title_text=_axis_title(data, names[1]))
        fig.update_yaxes(title_text=_axis_title(data, names[0]))
    title = f"Pareto front: {', '.join(names)} ({len(data.front)} of {len(data.trials)} trials)"
    fig.update_layout(title=title, height=max(450, 330 * n), hovermode="closest")
    return fig


def _dimension(label: str, values: list[Any]) -> dict[str, Any]:
    """A parcoords axis; categorical values become ticks at 0..k-1."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return {"label": label, "values": [float(v) for v in values]}
    cats = sorted({json.dumps(v, default=str) for v in values})
    index = {c: i for i, c in enumerate(cats)}
    return {"label": label, "values": [index[json.dumps(v, default=str)] for v in values],
            "tickvals": list(range(len(cats))),
            "ticktext": [json.loads(c) if c.startswith('"') else c for c in cats]}


def parallel_coordinates(data: StudyData) -> go.Figure:
    """Every varying knob, then every objective, one line per complete trial (colour: first objective)."""
    trials = data.trials
    knobs = data.varying_knobs()
    dims = [_dimension(k.split(".", 1)[-1], [t.params.get(k) for t in trials]) for k in knobs]
    dims += [_dimension(o, [t.values[o] for t in trials]) for o in data.objectives]
    dims.append({"label": "on front", "values": [int(t.on_front) for t in trials], "tickvals": [0, 1],
                 "ticktext": ["no", "yes"]})
    first = data.objectives[0]
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": [t.values[first] for t in trials], "colorscale": "Viridis", "showscale": True,
              "reversescale": data.directions[0] == "minimize", "colorbar": {"title": {"text": first}}}))
    fig.update_layout(title="Knobs against objectives (drag along an axis to filter)", height=500)
    return fig


def hypervolume_over_trials(data: StudyData) -> go.Figure:
    """Hypervolume of the feasible trials so far, after each trial."""
    ref = ", ".join(f"{k}={_fmt(v)}" for k, v in data.reference.items())
    fig = go.Figure(go.Scatter(x=[n for n, _ in data.hypervolume], y=[h for _, h in data.hypervolume],
                               mode="lines+markers", line={"shape": "hv"}, name="hypervolume"))
    fig.update_layout(title=f"Hypervolume over trials (reference: {ref})", xaxis_title="trial",
                      yaxis_title="hypervolume", height=400)
    return fig


def _config_label(data: StudyData, number: int) -> str:
    t = next(t for t in data.trials if t.number == number)
    p = t.params
    bits = [str(p.get("deploy.precision", "")), f"{p.get('deploy.intra_op_threads', '?')}t"]
    return f"trial {number} ({', '.join(b for b in bits if b)})"


def latency_distributions(data: StudyData) -> go.Figure:
    """Latency of each front configuration: raw samples as a violin, or the summary when emulated."""
    fig = go.Figure()
    for i, s in enumerate(sorted(data.latency, key=lambda s: s.median_ms)):
        name = _config_label(data, s.trial)
        color = PALETTE[i % len(PALETTE)]
        if s.samples_ms:
            fig.add_trace(go.Violin(y=list(s.samples_ms), name=name, box={"visible": True},
                                    meanline={"visible": True}, points=False, line={"color": color},
                                    hoverinfo="y+name", spanmode="hard"))
        else:
            fig.add_trace(go.Scatter(
                x=[name], y=[s.median_ms], mode="markers", name=f"{name} [{s.source}: interval]",
                marker={"color": color, "size": 10},
                error_y={"type": "data", "symmetric": False, "array": [s.ci_high_ms - s.median_ms],
                         "arrayminus": [s.median_ms - s.ci_low_ms]}))
    fig.update_layout(title=f"Latency distributions of the front's configurations on {data.device} "
                            "(raw samples)", yaxis_title="latency (ms)", yaxis_type="log",
                      showlegend=False, height=450)
    return fig


def knob_effects(data: StudyData) -> go.Figure:
    """Latency against each varying deployment knob, one colour per precision."""
    metric = data.latency_metric
    trials = [t for t in data.trials if metric in t.metrics or metric in t.values]
    knobs = [k for k in data.varying_knobs("deploy.") if k != "deploy.precision"] or ["deploy.precision"]
    precisions = sorted({str(t.params.get("deploy.precision", "fp32")) for t in trials})
    cols = min(2, len(knobs))
    rows = (len(knobs) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[k.split(".", 1)[1] for k in knobs])
    for idx, knob in enumerate(knobs):
        row, col = idx // cols + 1, idx % cols + 1
        for c, prec in enumerate(precisions):
            pts = [t for t in trials if str(t.params.get("deploy.precision", "fp32")) == prec]
            fig.add_trace(go.Box(
                x=[str(t.params.get(knob)) for t in pts],
                y=[t.values.get(metric, t.metrics.get(metric)) for t in pts],
                name=prec, legendgroup=prec, showlegend=idx == 0, marker={"color": PALETTE[c % len(PALETTE)]},
                boxpoints="all", jitter=0.3, pointpos=0, text=[hover_text(t) for t in pts],
                hoverinfo="text"), row=row, col=col)
        fig.update_yaxes(title_text=metric, type="log", row=row, col=col)
        fig.update_xaxes(type="category", categoryorder="category ascending", row=row, col=col)
    fig.update_layout(title=f"Deployment knobs' effect on {metric}, per precision", boxmode="group",
                      height=max(400, 350 * rows))
    return fig


def all_figures(data: StudyData) -> dict[str, go.Figure]:
    """Every dashboard figure, keyed by a file-friendly name, in report order."""
    return {
        "pareto_front": pareto_front(data),
        "parallel_coordinates": parallel_coordinates(data),
        "hypervolume": hypervolume_over_trials(data),
        "latency_distributions": latency_distributions(data),
        "knob_effects": knob_effects(data),
    }
