"""Board profiles from published figures: rows -> observations -> one joint fit -> per-profile blocks.

`observations` turns every used `published.PublishedRow` into a `fit.Obs` (the suite model's work
from the packaged work table, the profile's datasheet peaks at the row's clock). `calibrate_boards`
fits all boards jointly (runtime ratios and class efficiencies are shared, device offsets are not),
runs leave-one-family-out for the bands and the validation figures, and returns one `PhysicsFit`
per profile with the provenance of every number. `predict_work` is what a prediction uses.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from scipy.stats import norm

from edge_search.devices.emulation import fit as F
from edge_search.devices.emulation.physics import (
    COMPUTE_WORK,
    WORK_CLASSES,
    ModelWork,
    cpu_peaks,
    gpu_peaks,
    load_work_table,
)
from edge_search.devices.emulation.published import (
    CPU_REFERENCE_RUNTIME,
    GPU_REFERENCE_RUNTIME,
    PublishedRow,
    read_all,
)
from edge_search.devices.profile import Calibration, DeviceProfile, PhysicsFit, Sourced
from edge_search.errors import InputError

WORK_TABLE = "suite_work.json"
GPU_RUNTIMES = ("ort-trt", "ort-cuda")
"""GPU runtimes a profile stores numbers for: ONNX Runtime's TensorRT and CUDA providers."""
BAND_FLOOR = 0.15
"""Smallest band shipped: published figures of one model on one board differ by more than this."""
NO_DATA_BAND = 1.5
"""Band of a path with no held-out errors at all (prior only)."""


def work_table() -> dict[str, ModelWork]:
    """The packaged suite work table (suite key -> work; family in ``extra``)."""
    return load_work_table(Path(str(resources.files("edge_search.device_profiles").joinpath(WORK_TABLE))))


def isa(profile: DeviceProfile) -> str:
    return "x86" if profile.cpu.architecture == "x86_64" else "arm"


def obs_for(profile: DeviceProfile, work: ModelWork, path: str, precision: str, runtime: str, threads: int,
            family: str = "", clock_ghz: float | None = None, latency_ms: float = math.nan, rid: str = "",
            model: str = "", bench: str = "") -> F.Obs:
    """One observation (or query) of `work` on `profile`."""
    peaks = cpu_peaks(profile, clock_ghz) if path == "cpu" else gpu_peaks(profile)
    if not peaks:
        raise InputError(f"device '{profile.name}' has no accelerator: no GPU path")
    return F.Obs(profile.name, path, precision, runtime, threads, isa(profile), {k: v[0] for k, v in peaks.items()},
                 work, family or str(work.extra.get("family", "")), latency_ms, rid, model, bench,
                 profile.cpu.int8_dot_product)


def observations(rows: Sequence[PublishedRow], profiles: dict[str, DeviceProfile],
                 table: dict[str, ModelWork] | None = None) -> list[F.Obs]:
    """Used rows with a profile and a suite model, as observations."""
    table = table or work_table()
    out = []
    for r in rows:
        if not r.used or r.model not in table or r.device not in profiles:
            continue
        out.append(obs_for(profiles[r.device], table[r.model], r.path, r.precision, r.runtime, r.threads,
                           clock_ghz=r.clock_ghz, latency_ms=r.latency_ms, rid=r.rid, model=r.model,
                           bench=benchmark_id(r)))
    return out


def benchmark_id(r: PublishedRow) -> str:
    """The benchmark a published row belongs to: its source, runtime, device, path and precision."""
    return f"{r.source}|{r.runtime}|{r.device}|{r.path}|{r.precision}"


@dataclass
class BoardsFit:
    """The joint fit, its held-out predictions, and one `PhysicsFit` per profile."""

    result: F.FitResult
    held: list[F.Held]
    figures: dict[str, dict[str, float]]
    physics: dict[str, PhysicsFit]


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _val(res: F.FitResult, name: str) -> float:
    """A parameter's fitted value, or its prior mean when no row touched it."""
    v = res.value(name)
    if v is not None:
        return v
    from edge_search.devices.emulation.fit import PRIOR_EFF_GPU, PRIOR_ETA

    if name.startswith("eff.cpu.fp32."):
        return F.cpu_class_prior(name.rsplit(".", 1)[1])[0]
    if name.startswith("q.cpu.int8."):
        return math.log(F.PRIOR_INT8_RATIO[name.endswith(".dot")][0])
    if name.startswith("eff.gpu."):
        return math.log(PRIOR_EFF_GPU[name.rsplit(".", 1)[1]])
    if name.startswith("eta."):
        return math.log(PRIOR_ETA[name.rsplit(".", 1)[1]] / (1 - PRIOR_ETA[name.rsplit(".", 1)[1]]))
    if name.startswith("overhead."):
        return math.log(F.PRIOR_OVERHEAD_MS[name.rsplit(".", 1)[1]])
    if name.startswith("node."):
        return math.log(F.PRIOR_NODE_US[name.rsplit(".", 1)[1]])
    if name.startswith("rt.") and ".gpu." in name and name.rsplit(".", 1)[1] in F.RT_GROUPS:
        return F.PRIOR_RT_GPU.get(name.split(".")[1], (0.0, 0.0))[0]  # precision terms have prior mean 0
    return 0.0


def widen_band(band: float, log_sd: float) -> float:
    """`band` (a `F.BAND_QUANTILE` quantile of |log error|) with an independent normal log error of sd
    `log_sd` added in quadrature at the same quantile."""
    z = float(norm.ppf(0.5 + F.BAND_QUANTILE / 2))
    return math.exp(math.hypot(math.log1p(band), z * log_sd)) - 1.0


def physics_block(profile: DeviceProfile, res: F.FitResult, rows: Sequence[F.Obs],
                  figures: dict[str, dict[str, float]], bands: dict[str, float], csvs: str) -> PhysicsFit:
    """Resolve the joint fit's parameters for one profile, each with where it came from."""
    d = profile.name
    mine = [o for o in rows if o.device == d]
    today = time.strftime("%Y-%m-%d")

    def about(path: str, precision: str | None = None) -> str:
        sel = [o for o in mine if o.path == path and (precision is None or o.precision == precision)]
        if not sel:
            return (f"no published {path}{' ' + precision if precision else ''} rows for {d}: prior and the "
                    f"runtime/class ratios fitted on the other boards ({len(rows)} rows, {csvs})")
        rts = Counter(o.runtime for o in sel)
        fams = sorted({o.family for o in sel})
        return (f"joint fit {today} to {len(rows)} published rows ({csvs}); {d} {path}"
                f"{' ' + precision if precision else ''}: {len(sel)} rows, runtimes "
                f"{', '.join(f'{k} {v}' for k, v in rts.most_common())}; families {', '.join(fams)}")

    params: dict[str, Sourced] = {}
    for prec, (v, why) in cpu_peaks(profile).items():
        if prec == "memory":
            params["cpu.bandwidth_gb_s"] = Sourced(value=round(v, 4), source=why)
        else:
            params[f"cpu.peak.{prec}"] = Sourced(value=round(v, 4), source=f"datasheet prior: {why}")
    dot = "dot" if profile.cpu.int8_dot_product else "nodot"
    for prec in ("fp32", "int8"):
        src = about("cpu", prec)
        for k in WORK_CLASSES:
            lg = (sum(_val(res, n) for n in F.cpu_class_params(k)) + _val(res, f"dev.{d}.cpu")
                  + _val(res, f"dev.{d}.cpu.{k}") + _val(res, F.reference_group_param(d, k)))
            why = "ONNX Runtime, 1 thread, fraction of peak"
            if prec != "fp32":
                lg += (_val(res, f"dev.{d}.cpu.{prec}")
                       + _val(res, f"dev.{d}.cpu.{prec}.{k}"))
                if k != "memory":
                    lg += _val(res, f"q.cpu.{prec}.{dot}")
                    ratio, rwhy = F.PRIOR_INT8_RATIO[profile.cpu.int8_dot_product]
                    why += (f"; tied to the fp32 efficiency by a fitted int8/fp32 efficiency ratio (prior {ratio:g}: "
                            f"{rwhy})")
            params[f"cpu.eff.{prec}.{k}"] = Sourced(value=round(math.exp(lg), 6), source=f"{why}; {src}")
    src = about("cpu")
    for grp in ("compute", "memory"):
        e = _val(res, f"eta.{d}.{grp}") + _val(res, f"eta_rt.{CPU_REFERENCE_RUNTIME}.{grp}")
        params[f"cpu.eta.{grp}"] = Sourced(value=round(_sig(e), 4),
                                           source=f"thread scaling 1+(n-1)eta (ONNX Runtime: the device's scaling "
                                                  f"and ONNX Runtime's own term, 0 without 1-thread rows); {src}")
    params["cpu.overhead_ms"] = Sourced(value=round(math.exp(_val(res, f"overhead.{d}.cpu")), 5), source=src)
    params["cpu.node_us"] = Sourced(value=round(math.exp(_val(res, f"node.{d}.cpu")), 4),
                                    source=f"per kernel, ONNX Runtime; {src}")
    if profile.accelerator is not None:
        for prec, (v, why) in gpu_peaks(profile).items():
            if prec != "memory":
                params[f"gpu.peak.{prec}"] = Sourced(value=round(v, 3), source=f"datasheet prior: {why}")
        gsrc = about("gpu")
        for rt in GPU_RUNTIMES:
            ref = rt == GPU_REFERENCE_RUNTIME
            for prec in ("fp32", "fp16", "int8"):
                for g in F.RT_GROUPS:
                    gp = prec if prec != "int8" else "fp16"
                    lg = (_val(res, f"eff.gpu.fp32.{g}") + (0.0 if gp == "fp32" else _val(res, f"q.gpu.{gp}.{g}"))
                          + _val(res, f"dev.{d}.gpu")
                          + (0.0 if ref else _val(res, f"rt.{rt}.gpu.{g}") + _val(res, f"rt.{rt}.gpu.{gp}")))
                    extra = " (int8: the fp16 efficiency at the int8 peak, no int8 GPU data)" if prec == "int8" else ""
                    params[f"gpu.{rt}.eff.{prec}.{g}"] = Sourced(value=round(math.exp(lg), 6),
                                                                 source=f"{rt}, fraction of peak{extra}; {gsrc}")
            o = (_val(res, "overhead.gpu") + _val(res, f"overhead_dev.{d}.gpu")
                 + (0.0 if ref else _val(res, f"overhead_rt.{rt}.gpu") + _val(res, f"overhead_rt_dev.{rt}.{d}.gpu")))
            nd = _val(res, f"node.{d}.gpu") + (0.0 if ref else _val(res, f"node_rt.{rt}.gpu"))
            params[f"gpu.{rt}.overhead_ms"] = Sourced(value=round(math.exp(o), 5), source=f"{rt}; {gsrc}")
            params[f"gpu.{rt}.node_us"] = Sourced(value=round(math.exp(nd), 4), source=f"{rt}; {gsrc}")
    band_src = ("{q:.0%} quantile of |log error| of leave-one-family-out predictions at the runtime level (no "
                "benchmark effect: a new setup; {n} held-out rows of {what}; floor {floor:.0%})")
    out_bands: dict[str, Sourced] = {}
    for path in ("cpu-fp32", "cpu-int8", "gpu"):
        if path == "gpu" and profile.accelerator is None:
            continue
        key = f"{d}/{path}"
        if key in bands and not math.isnan(bands[key]):
            n = int(figures.get(key, {}).get("n", 0))
            b, what = bands[key], f"{d} {path}"
            if n < F.MIN_BAND_ROWS:
                what = f"{d} {path} pooled with the same path on all boards"
        else:
            pooled = [v for k, v in bands.items() if k.endswith("/" + path) and not math.isnan(v)]
            b = max(pooled) if pooled else NO_DATA_BAND
            n, what = 0, f"no held-out rows on {d} {path}: the widest band of that path on the other boards"
        src_b = band_src.format(q=F.BAND_QUANTILE, n=n, what=what, floor=BAND_FLOOR)
        if path == "cpu-int8" and res.value(f"q.cpu.int8.{dot}") is None:
            # no ONNX Runtime int8 row on a core of this kind: the held-out errors (other runtimes' int8, each
            # with its own fitted ratio) never tested ONNX Runtime's int8/fp32 ratio, which sits at its prior
            b = widen_band(b, F.PRIOR_SD["int8"])
            src_b += (f"; widened by the prior spread of ONNX Runtime's int8/fp32 ratio (log sd "
                      f"{F.PRIOR_SD['int8']:g}, no ONNX Runtime int8 rows on a {dot} core)")
        out_bands[path] = Sourced(value=round(max(b, BAND_FLOOR), 4), source=src_b)
    val = {k.split("/", 1)[1]: {m: round(x, 4) for m, x in v.items()} for k, v in figures.items()
           if k.startswith(d + "/")}
    return PhysicsFit(
        source=(f"physics model (roofline prior x fitted efficiency, runtime ratios, thread scaling) fitted "
                f"{today} jointly to {len(rows)} published rows ({csvs}); ONNX Runtime is the reference "
                "runtime; bands and validation from leave-one-family-out cross-validation"),
        fitted_at=today, params=params, bands=out_bands, validation=val)


def calibrate_boards(profiles: dict[str, DeviceProfile], v2: Path | None = None, v1: Path | None = None,
                     progress: Callable[[str], None] | None = None) -> BoardsFit:
    """Fit every emulated board profile from the published CSVs; leave-one-family-out bands."""
    boards = {n: p for n, p in profiles.items() if p.latency.method == "emulated"}
    rows = observations(read_all(v2, v1), boards)
    if not rows:
        raise InputError("no usable published rows for any emulated profile")
    csvs = f"{(v2 or Path('published_latency_v2.csv')).name} + {(v1 or Path('published_device_latency.csv')).name}"
    res = F.fit(rows)
    held = F.lofo(rows, progress=progress)
    figures = F.figures(held)
    runtime_level = F.figures(F.runtime_view(held))
    for key, f in figures.items():
        for m in ("median_abs_err", "within_30", "coverage", "band"):
            f[f"runtime_level_{m}"] = runtime_level.get(key, {}).get(m, math.nan)
        f["tau"] = res.tau
    # the shipped band is for a new setup (a user's ONNX Runtime): the runtime-level held-out errors,
    # which carry the between-benchmark spread on top of the family error
    bands = F.bands_from_errors(F.runtime_view(held))
    phys = {n: physics_block(p, res, rows, figures, bands, csvs) for n, p in boards.items()}
    return BoardsFit(res, held, figures, phys)


# --- prediction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhysicsPrediction:
    """A prediction and its parts (ms), band and the runtime it is for."""

    median_ms: float
    parts: dict[str, float]
    band: float
    runtime: str
    path: str


def _speedup(threads: int, eta: float) -> float:
    return 1.0 + (threads - 1) * eta


def predict_work(profile: DeviceProfile, work: ModelWork, precision: str, threads: int = 1,
                 runtime: str = CPU_REFERENCE_RUNTIME) -> PhysicsPrediction:
    """Predicted ONNX Runtime latency of `work` on `profile` (CPU: ``ort``; GPU: ``ort-trt``/``ort-cuda``)."""
    ph = profile.calibration.physics
    if ph is None:
        raise InputError(f"device '{profile.name}' has no physics calibration (run `edge-search calibrate`)")
    p = {k: v.value for k, v in ph.params.items()}
    gpu = runtime != CPU_REFERENCE_RUNTIME
    parts: dict[str, float] = {}
    if not gpu:
        prec = "fp32" if precision == "fp16" else precision
        if f"cpu.peak.{prec}" not in p:
            raise InputError(f"device '{profile.name}' has no {precision} CPU calibration")
        for k in WORK_CLASSES:
            peak = p["cpu.bandwidth_gb_s"] if k == "memory" else p[f"cpu.peak.{prec}"]
            eta = p["cpu.eta.compute" if k in COMPUTE_WORK else "cpu.eta.memory"]
            w = work.work.get(k, 0.0)
            if w:
                parts[k] = w / (peak * p[f"cpu.eff.{prec}.{k}"]) * 1000.0 / _speedup(threads, eta)
        parts["overhead"] = p["cpu.overhead_ms"]
        parts["nodes"] = work.nodes * p["cpu.node_us"] / 1000.0
        band = ph.bands.get(f"cpu-{prec}") or ph.bands.get("cpu-fp32")
    else:
        if f"gpu.{runtime}.overhead_ms" not in p:
            raise InputError(f"device '{profile.name}' has no GPU calibration for {runtime}")
        for k in WORK_CLASSES:
            g = F._RT_GROUP[k]
            peak = p.get("cpu.bandwidth_gb_s", 1.0) if k == "memory" else p[f"gpu.peak.{precision}"]
            w = work.work.get(k, 0.0)
            if w:
                parts[k] = w / (peak * p[f"gpu.{runtime}.eff.{precision}.{g}"]) * 1000.0
        parts["overhead"] = p[f"gpu.{runtime}.overhead_ms"]
        parts["nodes"] = work.nodes * p[f"gpu.{runtime}.node_us"] / 1000.0
        band = ph.bands.get("gpu")
    total = float(sum(parts.values()))
    return PhysicsPrediction(total, parts, band.value if band else NO_DATA_BAND, runtime, "gpu" if gpu else "cpu")


def held_table(held: Sequence[F.Held]) -> list[dict[str, object]]:
    """Held-out predictions as plain rows (for JSON and figures)."""
    return [{"rid": h.obs.rid, "device": h.obs.device, "path": h.obs.path, "precision": h.obs.precision,
             "runtime": h.obs.runtime, "threads": h.obs.threads, "model": h.obs.model, "family": h.obs.family,
             "published_ms": h.obs.latency_ms, "predicted_ms": round(h.predicted_ms, 4),
             "rel_error": round(h.predicted_ms / h.obs.latency_ms - 1.0, 4),
             "runtime_level_ms": round(h.runtime_level_ms, 4), "runtime_seen": h.runtime_seen,
             "benchmark": h.obs.bench} for h in held]


def spread(values: Sequence[float]) -> float:
    """Median |log| of a list of ratios (for summaries)."""
    return float(np.median(np.abs(np.log(values)))) if len(values) else math.nan


__all__ = [
    "BoardsFit",
    "PhysicsPrediction",
    "board_calibration",
    "calibrate_boards",
    "held_table",
    "obs_for",
    "observations",
    "physics_block",
    "predict_work",
    "work_table",
]


def board_calibration(physics: PhysicsFit) -> Calibration:
    """A board's whole calibration block from its physics fit (the host-carry rates are dropped:
    a profile with `physics` is predicted from it)."""
    cpu = physics.validation.get("cpu-fp32", {})
    return Calibration(
        source=physics.source,
        runtime_note=("predictions are for ONNX Runtime (CPU provider; on a GPU its TensorRT or CUDA provider); "
                      "other runtimes' published figures enter through fitted runtime ratios"),
        fitted_at=physics.fitted_at,
        error_band=physics.bands.get("cpu-fp32"),
        error_band_gpu=physics.bands.get("gpu"),
        fit_stats={k: v for k, v in cpu.items() if k in ("n", "median_abs_err", "within_30", "coverage")},
        physics=physics,
    )
