"""The HTML report: one self-contained file (plotly.js embedded, no CDN) with every figure and the
front as a sortable table. It opens offline, from disk or as an MLflow artifact."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.io as pio
from plotly.offline import get_plotlyjs

from edge_search.dashboards.data import StudyData
from edge_search.dashboards.figures import all_figures

_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var asc = th.dataset.dir !== "asc";
    th.closest("tr").querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = asc ? "asc" : "desc";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.sortable { border-collapse: collapse; font-size: 0.85em; }
table.sortable th, table.sortable td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.sortable th { background: #f0f0f0; cursor: pointer; user-select: none; }
table.sortable th[data-dir=asc]::after { content: " \\25B2"; }
table.sortable th[data-dir=desc]::after { content: " \\25BC"; }
.summary { color: #555; }
"""


def front_table(data: StudyData) -> tuple[list[str], list[list[Any]]]:
    """The front as (columns, rows): trial, objectives (confirmed latency where confirmed), the
    latency's 95 % interval and where it comes from (``confirmed`` in N rounds, or the ``search``
    measurement), latency source, the knobs that vary, run id."""
    knobs = data.varying_knobs()
    columns = ["trial", *data.objectives, "latency 95% interval (ms)", "latency figure", "latency_source",
               *(k.split(".", 1)[-1] for k in knobs), "mlflow_run_id"]
    rows = []
    for t in data.front:
        lat = t.confirmed or t.latency
        interval = (f"[{lat['ci_low_ms']:.4g}, {lat['ci_high_ms']:.4g}]"
                    if lat.get("ci_low_ms") is not None and lat.get("ci_high_ms") is not None else "")
        figure = f"confirmed ({t.confirmed.get('rounds', 0)} rounds)" if t.confirmed else "search"
        shown = t.shown_values
        rows.append([t.number, *(shown[o] for o in data.objectives), interval, figure, t.latency_source,
                     *(t.params.get(k) for k in knobs), t.run_id or ""])
    return columns, rows


def _cell(v: Any) -> str:
    shown = f"{v:.4g}" if isinstance(v, float) else str(v)
    return f'<td data-v="{html.escape(str(v), quote=True)}">{html.escape(shown)}</td>'


def table_html(data: StudyData) -> str:
    """The front as an HTML table whose headers sort it on click."""
    columns, rows = front_table(data)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="sortable" id="front"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def report_html(data: StudyData) -> str:
    """The full report as one HTML document with plotly.js inlined."""
    figures = all_figures(data)
    best = data.hypervolume[-1][1] if data.hypervolume else 0.0
    sections = []
    for key, fig in figures.items():
        title = fig.layout.title.text or key
        # the section heading carries the title; parallel coordinates need room for axis labels
        fig.update_layout(title=None, margin={"t": 70 if key == "parallel_coordinates" else 30})
        div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{key}",
                          config={"displaylogo": False, "responsive": True})
        sections.append(f'<section class="figure" id="{key}"><h2>{html.escape(title)}</h2>{div}</section>')
    n_feasible = sum(t.feasible for t in data.trials)
    objectives = ", ".join(f"{o} ({d})" for o, d in zip(data.objectives, data.directions, strict=True))
    study, device = html.escape(data.study_name), html.escape(data.device)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>edge-search report: {html.escape(data.study_name)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head><body>
<h1>edge-search study <code>{study}</code> on <code>{device}</code></h1>
<p class="summary">{len(data.trials)} complete trials, {n_feasible} feasible,
{len(data.front)} on the Pareto front; objectives: {html.escape(objectives)};
hypervolume {best:.4g}.</p>
<h2>Pareto front (click a column to sort)</h2>
{table_html(data)}
{"".join(sections)}
<script type="text/javascript">{_SORT_JS}</script>
</body></html>
"""


def write_report(data: StudyData, path: Path) -> Path:
    """Write the report to `path` (parent folders created) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_html(data), encoding="utf-8")
    return path
