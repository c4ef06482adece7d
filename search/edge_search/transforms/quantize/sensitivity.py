"""Per-node int8 sensitivity: which Conv/MatMul/Gemm nodes cost the most fidelity when quantised.

The fp32 model is prepared exactly as `QuantizeTransform` prepares it (`static.prepare_static`:
pre-processing, node names, CLE / SmoothQuant / bias correction where the settings ask, and **one**
calibration whose ranges every variant reuses), so the ranking is made on top of those techniques. A
candidate is a Conv/MatMul/Gemm node together with the chain of nodes only it feeds (its activation,
a residual Add, pooling; up to the next weight node or a branch): excluding the weight node alone
would leave Q/DQ pairs on its activation and output, so it would not really run in float32. Each
candidate is then scored with the task's own `evaluate` (fidelity to the task's fp32 model, or the
task metric where no fidelity is reported, e.g. `digits-cnn` accuracy), by one of two methods (ORT's
`nodes_to_exclude` either way):

- `quantise` (default): only this candidate int8, everything else fp32; its sensitivity is the
  metric it loses by itself (fp32 score - score);
- `dequantise`: the all-int8 model with only this candidate fp32; its sensitivity is the metric
  it regains (score - all-int8 score).

On the MobileNetV2-style example (random weights, 1000 classes, 64 images), `dequantise` ranked
badly: errors compound in the all-int8 model, so removing any single source barely moves top-1,
and keeping even 48 of 53 top-ranked candidates in fp32 left cosine fidelity near its int8 value;
with the `quantise` ranking, fidelity rose steadily with k. Ties (top-1 moves in steps of
1/eval-size) are broken by `fidelity_cosine` where the task reports it.

Cost: one calibration, then one quantisation (with the cached ranges) and one evaluation per
candidate; the task's evaluation set is the subset that is scored (`eval_size` of an `onnx` task).
Optionally, a rough in-process latency per variant (1 thread, batch 1, median of a few runs;
noisy, not a measurement in edge-search's sense) is recorded.

The report is cached in the `ArtifactCache` under `sensitivity/<key>`, keyed by the model bytes,
the task's name and version (which hash its data), the input resolution, the quantisation
settings, the metric and the method, so a search pays for it once and later processes reuse it.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import Field

from edge_search.cache import ArtifactCache, content_key, file_sha256
from edge_search.config import DeployConfig
from edge_search.errors import InputError
from edge_search.metrics import METRICS
from edge_search.schema import StrictModel
from edge_search.tasks.base import Task
from edge_search.transforms.quantize.ort import OP_TYPES
from edge_search.transforms.quantize.static import prepare_static, quantize_prepared

log = logging.getLogger(__name__)

SENSITIVITY_VERSION = 5
"""Bump when the method changes: it is part of the cache key."""
QUANTISABLE_OPS = ("Conv", "MatMul", "Gemm")
"""Op types that are ranked (the weight-carrying ops int8 speeds up)."""
LATENCY_RUNS = 15
"""Runs per variant for the rough in-process latency."""
Method = Literal["quantise", "dequantise"]
DEFAULT_METHOD: Method = "quantise"
"""`quantise`: each candidate alone int8, the rest fp32 (the damage it causes by itself);
`dequantise`: each candidate alone fp32 in the all-int8 model (the fidelity it regains)."""
SENSITIVITY_ID = f"{SENSITIVITY_VERSION}-{DEFAULT_METHOD}"
"""What `keep_fp32_top_k` deployables are ranked by (part of the pipeline's deploy cache key)."""


class QuantSettings(StrictModel):
    """The int8-static knobs a ranking depends on (part of its cache key)."""

    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_size: int = Field(256, ge=1)
    calibration_percentile: float = Field(99.999, ge=99.0, lt=100.0)
    per_channel: bool = True
    reduce_range: bool = False
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    quantize_op_types: Literal["all", "conv", "matmul"] = "all"
    activation_symmetric: bool = False
    bias_correction: bool = True
    cross_layer_equalization: bool = False
    smooth_quant: bool = False
    smooth_quant_alpha: float = Field(0.5, ge=0.0, le=1.0)
    quantize_matmul_outputs: bool = False
    activation_type: Literal["int8", "uint8"] = "int8"

    @classmethod
    def from_deploy(cls, deploy: DeployConfig) -> QuantSettings:
        """The settings of a trial's deploy knobs that its ranking depends on. The format and the
        activation type are not among them: QDQ and QOperator, int8 and uint8 activations put
        values on the same grids, so one ranking (made in QDQ S8S8) serves them all, and a search
        that varies them pays for one analysis instead of four."""
        knobs = deploy.model_dump(include=set(cls.model_fields) - {"quant_format", "activation_type"})
        return cls(**knobs)

    def deploy(self) -> DeployConfig:
        """A DeployConfig for all-int8 static quantisation with these settings."""
        return DeployConfig(precision="int8-static", **self.model_dump())


@dataclass(frozen=True)
class NodeSensitivity:
    """One candidate node: the metric with it alone kept in float32, and the gain over all-int8."""

    name: str
    """The weight node (Conv/MatMul/Gemm) that heads the candidate."""
    op_type: str
    score: float
    gain: float
    """Metric gained over the all-int8 model (positive: keeping it fp32 helps)."""
    cosine_gain: float | None = None
    """Gain in fidelity_cosine (tie-breaker), where the task reports it."""
    latency_ms: float | None = None
    """Rough in-process latency of this variant (when the analysis was asked to time)."""
    members: tuple[str, ...] = ()
    """Every node the candidate keeps in float32: `name` and the chain only it feeds."""


@dataclass(frozen=True)
class SensitivityReport:
    """Candidates ranked by `gain` (most sensitive first) with the fp32 and all-int8 references."""

    metric: str
    fp32_score: float
    int8_score: float
    nodes: tuple[NodeSensitivity, ...]
    settings: dict[str, Any]
    method: str = DEFAULT_METHOD
    eval_seconds: float = 0.0
    fp32_latency_ms: float | None = None
    int8_latency_ms: float | None = None
    cache_key: str = ""

    @property
    def ranking(self) -> list[str]:
        """Node names, most sensitive first."""
        return [n.name for n in self.nodes]

    def top(self, k: int) -> list[str]:
        """The `k` most sensitive candidates' weight nodes (all of them when k exceeds the candidates)."""
        return self.ranking[:max(0, k)]

    def top_fraction(self, fraction: float) -> list[str]:
        """The most sensitive `round(fraction * candidates)` candidates' weight nodes."""
        return self.top(round(fraction * len(self.nodes)))

    def members(self, heads: list[str]) -> list[str]:
        """Every node the candidates headed by `heads` keep in float32 (what ORT is told to exclude)."""
        by_name = {n.name: n for n in self.nodes}
        return [m for h in heads for m in (by_name[h].members or (h,))]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the cached form and `--json`)."""
        d = asdict(self)
        d["nodes"] = [asdict(n) for n in self.nodes]
        d["schema_version"] = SENSITIVITY_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SensitivityReport:
        """Inverse of `to_json`."""
        fields = {k: v for k, v in d.items() if k not in ("nodes", "schema_version")}
        nodes = tuple(NodeSensitivity(**{**n, "members": tuple(n.get("members", ()))}) for n in d["nodes"])
        return cls(nodes=nodes, **fields)


def kept_nodes(deploy: DeployConfig, report: SensitivityReport) -> list[str]:
    """The node names `keep_fp32_top_k` / `keep_fp32_fraction` keep in float32 for `deploy` (the top
    candidates' weight nodes and the chains only they feed)."""
    if deploy.keep_fp32_top_k > 0:
        return report.members(report.top(deploy.keep_fp32_top_k))
    if deploy.keep_fp32_fraction > 0:
        return report.members(report.top_fraction(deploy.keep_fp32_fraction))
    return []


# -- analysis ---------------------------------------------------------------------------------------

_MEMO: dict[str, SensitivityReport] = {}
"""Reports computed or read in this process, by cache key (trials of one search share them)."""


def sensitivity_key(model: Path, task: Task, settings: QuantSettings, metric: str,
                    resolution: int | None = None, method: Method = DEFAULT_METHOD) -> str:
    """Cache key: model bytes, task name + version (its data), resolution, settings, metric, method."""
    return content_key("sensitivity", SENSITIVITY_VERSION, file_sha256(model), task.name, task.version,
                       resolution, settings.model_dump(), metric, method)


def analyse_sensitivity(model: Path, task: Task, settings: QuantSettings | None = None, *,
                        metric: str = "fidelity_top1", cache: ArtifactCache | None = None,
                        resolution: int | None = None, method: Method = DEFAULT_METHOD,
                        time_variants: bool = False,
                        eval_batch: int = 16, progress: Callable[[str], None] | None = None,
                        ) -> SensitivityReport:
    """Rank `model`'s Conv/MatMul/Gemm nodes by the `metric` gained when each alone stays fp32.

    Called by `QuantizeTransform` (for `keep_fp32_top_k` / `keep_fp32_fraction`) and by the
    `sensitivity` command. `task` provides the calibration feeds and scores each variant with its
    `evaluate`; when its metrics lack `metric`, its `primary_metric` is used. A cached report is
    returned without any work (`cache` on disk, else this process's memo). `resolution` only enters
    the key (pass the bound task's `input_resolution`). Raises `InputError` when the model has no
    quantisable node or the task no calibration data.
    """
    settings = settings or QuantSettings()
    key = sensitivity_key(model, task, settings, metric, resolution, method)
    memo = _MEMO.get(key)
    if memo is not None:
        return memo
    if cache is not None:
        folder, _ = cache.entry("sensitivity", key, lambda tmp: _analyse_into(
            tmp, model, task, settings, metric, method, key, time_variants, eval_batch, progress))
        report = _read(folder)
    else:  # no cache: analyse in a temporary folder, removed once the report is read
        with tempfile.TemporaryDirectory(prefix="edge-search-sensitivity-") as tmp:
            _analyse_into(Path(tmp), model, task, settings, metric, method, key, time_variants, eval_batch,
                          progress)
            report = _read(Path(tmp))
    _MEMO[key] = report
    return report


def _read(folder: Path) -> SensitivityReport:
    data = json.loads((folder / "report.json").read_text())
    return SensitivityReport.from_json(data)


def _analyse_into(out: Path, model: Path, task: Task, settings: QuantSettings, metric: str, method: Method,
                  key: str, time_variants: bool, eval_batch: int, progress: Callable[[str], None] | None) -> None:
    say = progress or (lambda msg: log.info("%s", msg))
    start = time.perf_counter()
    deploy = settings.deploy()
    with tempfile.TemporaryDirectory(prefix="edge-search-sens-") as tmp_s:
        tmp = Path(tmp_s)
        prepared = prepare_static(model, tmp / "prepared", deploy, task)
        named = onnx.load(str(prepared.path))
        ops = _op_types(settings.quantize_op_types)
        candidates = candidate_units(named, ops)
        if not candidates:
            raise InputError(f"{model}: no {'/'.join(ops)} node to quantise; nothing to rank")
        feed = next(iter(task.calibration_batches(1, 1)), None) if time_variants else None

        def variant(exclude: list[str], path: Path) -> tuple[dict[str, float], float | None]:
            quantize_prepared(prepared, path, deploy, exclude)
            scores = task.evaluate(path, eval_batch)
            ms = _rough_latency_ms(path, feed) if feed is not None else None
            path.unlink()
            return scores, ms

        fp32_scores = task.evaluate(model, eval_batch)
        used = metric if metric in fp32_scores else task.primary_metric
        if used not in fp32_scores:
            raise InputError(f"task {task.name} reports no '{metric}' (metrics: {', '.join(fp32_scores)})")
        sign = -1.0 if _minimise(used) else 1.0
        fp32_ms = _rough_latency_ms(model, feed) if feed is not None else None
        say(f"sensitivity: calibrating once ({settings.calibration_method}, {settings.calibration_size} "
            f"samples), then {len(candidates)} candidate nodes")
        int8_scores, int8_ms = variant([], tmp / "int8.onnx")
        # dequantise: gain = score(all-int8 but this candidate) - score(all-int8);
        # quantise: gain = score(fp32) - score(only this candidate int8). Either way: keep-fp32 value.
        ref = int8_scores if method == "dequantise" else fp32_scores
        ref_cos = ref.get("fidelity_cosine")
        flip = 1.0 if method == "dequantise" else -1.0
        all_names = [n.name for n in named.graph.node]
        nodes: list[NodeSensitivity] = []
        for i, (name, op, members) in enumerate(candidates):
            exclude = list(members) if method == "dequantise" else [n for n in all_names if n not in members]
            scores, ms = variant(exclude, tmp / "variant.onnx")
            cos = scores.get("fidelity_cosine")
            nodes.append(NodeSensitivity(
                name=name, op_type=op, score=scores[used], gain=flip * sign * (scores[used] - ref[used]),
                cosine_gain=None if cos is None or ref_cos is None else flip * (cos - ref_cos), latency_ms=ms,
                members=members))
            if (i + 1) % 10 == 0 or i + 1 == len(candidates):
                say(f"sensitivity: {i + 1}/{len(candidates)} nodes ({time.perf_counter() - start:.0f} s)")
    nodes.sort(key=lambda n: (-n.gain, -(n.cosine_gain or 0.0), n.name))
    report = SensitivityReport(metric=used, fp32_score=fp32_scores[used], int8_score=int8_scores[used],
                               nodes=tuple(nodes), method=method,
                               settings=settings.model_dump(), eval_seconds=time.perf_counter() - start,
                               fp32_latency_ms=fp32_ms, int8_latency_ms=int8_ms, cache_key=key)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1))


def candidate_units(model: onnx.ModelProto, ops: tuple[str, ...]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(weight node, op type, members) per Conv/MatMul/Gemm of `ops`, in graph order.

    Members: the weight node, then the nodes reached by following single consumers forward until
    the next weight node, a branch (an output read by several nodes) or a graph output.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    outputs = {o.name for o in model.graph.output}
    units = []
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        members, cur = [node.name], node
        while len(cur.output) == 1 and cur.output[0] not in outputs:
            nxt = consumers.get(cur.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type in QUANTISABLE_OPS or nxt[0].name in members:
                break
            cur = nxt[0]
            members.append(cur.name)
        units.append((node.name, node.op_type, tuple(members)))
    return units


def _op_types(quantize_op_types: str) -> tuple[str, ...]:
    chosen = OP_TYPES[quantize_op_types]
    return tuple(op for op in QUANTISABLE_OPS if chosen is None or op in chosen)


def _minimise(metric: str) -> bool:
    return METRICS[metric].direction == "minimize" if metric in METRICS else False


def _rough_latency_ms(path: Path, feed: dict[str, np.ndarray] | None) -> float | None:
    """Median of `LATENCY_RUNS` batch-1 runs in this process with one thread (noisy, indicative)."""
    import onnxruntime as ort

    if feed is None:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def format_table(report: SensitivityReport, rows: int | None = None) -> str:
    """The ranking as a fixed-width table (most sensitive first)."""
    lat = report.fp32_latency_ms is not None
    head = f"{'rank':>4}  {'node':<48} {'op':<7} {report.metric:>14} {'gain':>8} {'cos gain':>10}"
    head += f" {'ms':>8}" if lat else ""
    lines = [f"{report.metric}: fp32 {report.fp32_score:.4f}, all-int8 {report.int8_score:.4f}"
             + (f"; rough latency fp32 {report.fp32_latency_ms:.3f} ms, all-int8 "
                f"{report.int8_latency_ms:.3f} ms" if lat and report.int8_latency_ms is not None else ""),
             head]
    for i, n in enumerate(report.nodes[:rows] if rows else report.nodes, 1):
        name = n.name if len(n.name) <= 48 else "…" + n.name[-47:]
        cos = f"{n.cosine_gain:+10.5f}" if n.cosine_gain is not None else f"{'-':>10}"
        line = f"{i:>4}  {name:<48} {n.op_type:<7} {n.score:>14.4f} {n.gain:>+8.4f} {cos}"
        if lat:
            line += f" {n.latency_ms:>8.3f}" if n.latency_ms is not None and math.isfinite(n.latency_ms) else " -"
        lines.append(line)
    if rows and len(report.nodes) > rows:
        lines.append(f"... {len(report.nodes) - rows} more (--json for all)")
    return "\n".join(lines)


def write_figure(report: SensitivityReport, path: Path, title: str = "") -> None:
    """A plotly bar chart of every node's gain, as one self-contained HTML file (plotly.js inline)."""
    import plotly.graph_objects as go

    names = report.ranking
    hover = [f"{n.name}<br>{n.op_type}<br>{report.metric} {n.score:.4f} (gain {n.gain:+.4f})"
             + (f"<br>cosine gain {n.cosine_gain:+.5f}" if n.cosine_gain is not None else "")
             + (f"<br>rough latency {n.latency_ms:.3f} ms" if n.latency_ms is not None else "")
             for n in report.nodes]
    fig = go.Figure(go.Bar(x=list(range(1, len(names) + 1)), y=[n.gain for n in report.nodes],
                           hovertext=hover, hoverinfo="text", marker_color="#3b6ea5"))
    fig.update_layout(
        title=title or (f"int8 sensitivity: {report.metric} gained when one node stays fp32 "
                        f"(fp32 {report.fp32_score:.4f}, all-int8 {report.int8_score:.4f})"),
        xaxis_title="rank (hover for the node)", yaxis_title=f"{report.metric} gain over all-int8",
        template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
