"""Carrying a model's host time to a target device: the emulator's model, and the graph-only screen.

`HostBreakdown` is a model's single-thread host profile summed per (precision, op class); `carry`
turns it into the target's time with the calibrated per-class rates, thread scaling and overhead
of both profiles (see `edge_search.devices.emulated` for the whole method); `prediction_stats`
wraps a prediction in a `LatencyStats` with the profile's error band as its interval.
`estimate_graph` is the cheap screen: the same carry from graph FLOPs/bytes, nothing executed.
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_search.devices.base import NodeTiming, SessionKnobs
from edge_search.devices.emulation.opclass import (
    class_group,
    classify_profiled,
    graph_costs,
    load_graph,
    model_precision,
)
from edge_search.devices.profile import DeviceProfile
from edge_search.devices.stats import HostInfo, LatencyStats
from edge_search.devices.worker.probes import cpu_model
from edge_search.errors import InputError

DEFAULT_ERROR_BAND = 0.5
TAIL_WARNING = "emulated: p90/p95/p99 equal the predicted median; tail latency is not predicted"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class ClassTime:
    """Host single-thread time and graph work of all nodes of one (precision, class)."""

    precision: str
    op_class: str
    host_ms: float
    work: float
    nodes: int


@dataclass(frozen=True)
class HostBreakdown:
    """A model's single-thread host profile, summed per (precision, class)."""

    classes: tuple[ClassTime, ...]
    peak_memory_mb: float | None = None
    unmatched_nodes: int = 0

    @property
    def host_ms(self) -> float:
        """Sum of the profiled node times (ms per inference)."""
        return sum(c.host_ms for c in self.classes)


def breakdown_from_nodes(
    model_path: Path,
    nodes: Iterable[NodeTiming],
    runs: int,
    shapes: dict[str, tuple[int, ...]] | None = None,
    peak_memory_mb: float | None = None,
    statistic: str = "min",
) -> HostBreakdown:
    """Sum `NodeTiming`s (``name, op_type, mean_us/min_us, count``) per (precision, class).

    `statistic` ``min`` (default) uses each node's fastest execution over the profiled runs where the
    profiler reported it (preemption on a shared machine only adds to a kernel's wall time, so the
    minimum is the undisturbed time; on a quiet machine it is within a few per cent of the mean),
    ``mean`` the mean.
    """
    g = load_graph(model_path, shapes)
    acc: dict[tuple[str, str], list[float]] = {}
    unmatched = 0
    for n in nodes:
        op_class, prec, work = classify_profiled(g, n.name, n.op_type)
        unmatched += work == 0.0 and op_class != "other"
        slot = acc.setdefault((prec, op_class), [0.0, 0.0, 0.0])
        us = n.min_us if statistic == "min" and n.min_us is not None else n.mean_us
        slot[0] += us * n.count / runs / 1000.0
        slot[1] += work
        slot[2] += 1
    classes = tuple(ClassTime(p, c, v[0], v[1], int(v[2])) for (p, c), v in sorted(acc.items()))
    return HostBreakdown(classes, peak_memory_mb, unmatched)


@dataclass
class Carried:
    """A prediction before it is wrapped in `LatencyStats`."""

    median_ms: float
    breakdown: dict[str, dict[str, float]]
    overhead_ms: float
    warnings: list[str] = field(default_factory=list)


def net_host_ms(ct: ClassTime, host: DeviceProfile | Any) -> float:
    """A class's share of an end-to-end host run: its profiled time less the profiler's own per-node cost
    (never below 30 %), times the calibration's ``profile_scale`` (end to end over profiled, default 1)."""
    cal = host.calibration if isinstance(host, DeviceProfile) else host
    per_node = cal.params.get("profile_overhead_us")
    scale = cal.params.get("profile_scale")
    ms = ct.host_ms if per_node is None else max(ct.host_ms - ct.nodes * per_node.value / 1000.0, 0.3 * ct.host_ms)
    return ms * (scale.value if scale is not None else 1.0)


def _host_rate(host: DeviceProfile, ct: ClassTime) -> float | None:
    prec = ct.precision if ct.precision != "fp16" else "fp32"
    rate = host.calibration.rate(prec, ct.op_class, class_group(ct.op_class))
    if rate is None and ct.host_ms > 0 and ct.work > 0:
        rate = ct.work / ct.host_ms / 1e6  # this model's own throughput (GFLOP/s or GB/s)
    return rate


def _target_precision(target: DeviceProfile, prec: str, gpu: bool, warnings: list[str]) -> str:
    has = any(k.startswith(f"{'gpu.' if gpu else ''}rate.{prec}.") for k in target.calibration.params)
    if has:
        return prec
    if prec == "fp16":
        warnings.append(
            f"{target.name}: no fp16 calibration on the {'GPU' if gpu else 'CPU'} path; "
            "fp16 nodes carried with the fp32 rates"
        )
        return "fp32"
    raise InputError(
        f"device '{target.name}' has no {prec} calibration on its {'GPU' if gpu else 'CPU'} "
        f"path (precisions: {', '.join(target.precisions)})"
    )


def carry(
    breakdown: HostBreakdown, host: DeviceProfile, target: DeviceProfile, threads: int, gpu: bool = False
) -> Carried:
    """Carry a host single-thread breakdown to `target` at `threads` intra-op threads."""
    cal = target.calibration
    warnings: list[str] = []
    total = 0.0
    out: dict[str, dict[str, float]] = {}
    for ct in breakdown.classes:
        if ct.host_ms <= 0:
            continue
        prec = _target_precision(target, ct.precision, gpu, warnings)
        group = class_group(ct.op_class)
        r_target = cal.rate(prec, ct.op_class, group, gpu)
        r_host = _host_rate(host, ct)
        if r_target is None or r_host is None:
            ratio = 1.0
            warnings.append(f"{ct.precision}.{ct.op_class}: no calibrated rate; host time used as is")
        else:
            ratio = r_host / r_target
        speedup = 1.0 if gpu else cal.speedup(threads, prec, ct.op_class)
        t = net_host_ms(ct, host) * ratio / speedup
        total += t
        out[f"{ct.precision}.{ct.op_class}"] = {
            "host_ms": ct.host_ms,
            "target_ms": t,
            "ratio": ratio,
            "speedup": speedup,
            "nodes": float(ct.nodes),
        }
    overhead = cal.overhead_ms(gpu)
    return Carried(total + overhead, out, overhead, list(dict.fromkeys(warnings)))


def _band(target: DeviceProfile, gpu: bool) -> tuple[float, str | None]:
    cal = target.calibration
    band = cal.error_band_gpu if gpu and cal.error_band_gpu is not None else cal.error_band
    if band is None:
        return DEFAULT_ERROR_BAND, (
            f"{target.name}: no calibrated error band; interval is ±{DEFAULT_ERROR_BAND:.0%} by default"
        )
    return band.value, None


def _host_info() -> HostInfo:
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        ort_version = ""
    return HostInfo(
        hostname=socket.gethostname(),
        cpu_model=cpu_model(),
        platform=platform.platform(),
        ort_version=ort_version,
        python=platform.python_version(),
    )


def wants_gpu(target: DeviceProfile, knobs: SessionKnobs) -> bool:
    """True when the session asks for an accelerator provider the target profile offers."""
    return any(p in target.gpu_providers for p in knobs.providers)


def prediction_stats(
    target: DeviceProfile,
    carried: Carried,
    knobs: SessionKnobs,
    gpu: bool,
    method: str,
    peak_memory_mb: float | None,
    extra_warnings: list[str],
    band_override: float | None = None,
) -> LatencyStats:
    band, band_warning = _band(target, gpu)
    if band_override is not None:
        band, band_warning = band_override, None
    m = carried.median_ms
    warnings = [*extra_warnings, *carried.warnings, TAIL_WARNING]
    if band_warning:
        warnings.append(band_warning)
    fits = None if peak_memory_mb is None else peak_memory_mb <= target.usable_memory_mb
    if fits is False:
        warnings.append(
            f"peak memory {peak_memory_mb:.0f} MB exceeds the {target.usable_memory_mb:.0f} MB "
            f"usable on {target.name} (RAM {target.memory.ram_mb:.0f} MB less "
            f"{target.memory.reserve_mb:.0f} MB reserve): infeasible"
        )
    cal = target.calibration
    extra: dict[str, Any] = {
        "method": method,
        "profile": target.name,
        "profile_version": target.version,
        "path": "gpu" if gpu else "cpu",
        "threads": 1 if gpu else knobs.intra_op_threads,
        "breakdown": carried.breakdown,
        "overhead_ms": carried.overhead_ms,
        "error_band": band,
        "calibration_source": cal.source,
        "calibration_note": cal.runtime_note,
        "fits_memory": fits,
        "device_ram_mb": target.memory.ram_mb,
        "usable_memory_mb": target.usable_memory_mb,
    }
    if target.power is not None:
        extra["energy_mj_at_tdp"] = target.power.tdp_w * m
    return LatencyStats(
        source="emulated",
        device=target.name,
        median_ms=m,
        p90_ms=m,
        p95_ms=m,
        p99_ms=m,
        mean_ms=m,
        stdev_ms=0.0,
        cv=0.0,
        ci_low_ms=m / (1.0 + band),
        ci_high_ms=m * (1.0 + band),
        stop_reason="predicted",
        peak_memory_mb=peak_memory_mb or 0.0,
        knobs=knobs.model_dump(mode="json"),
        host=_host_info(),
        warnings=tuple(dict.fromkeys(warnings)),
        extra=extra,
    )


def check_knobs(target: DeviceProfile, knobs: SessionKnobs) -> list[str]:
    """Refuse knobs the target cannot run; return warnings for knobs the emulator does not model."""
    bad = [p for p in knobs.providers if p not in target.execution_providers]
    if bad:
        raise InputError(
            f"execution provider(s) {', '.join(bad)} not offered by device '{target.name}' "
            f"(it has {', '.join(target.execution_providers)})"
        )
    if knobs.intra_op_threads > target.cpu.cores:
        raise InputError(
            f"intra-op threads {knobs.intra_op_threads} exceed the {target.cpu.cores} cores "
            f"of device '{target.name}'"
        )
    warnings = []
    if knobs.inter_op_threads > 1 or knobs.execution_mode == "parallel":
        warnings.append(
            "emulated: inter-op threads / parallel execution are not modelled (predicted as sequential)"
        )
    return warnings


def gpu_runtime(target: DeviceProfile, knobs: SessionKnobs) -> str:
    """The runtime key (`published.PROVIDER_RUNTIME`) a session runs with on `target`."""
    from edge_search.devices.emulation.published import PROVIDER_RUNTIME

    for prov in knobs.providers:
        if prov in target.gpu_providers:
            return PROVIDER_RUNTIME.get(prov, "ort-cuda")
    return "ort"


def predict_physics(
    model_path: Path,
    target: DeviceProfile,
    knobs: SessionKnobs,
    shapes: dict[str, tuple[int, ...]] | None,
    peak_memory_mb: float | None,
    warnings: list[str],
    method: str = "physics",
) -> LatencyStats:
    """Prediction from the model's graph work and the target's physics calibration
    (`boards.predict_work`): roofline peaks x fitted efficiencies, thread scaling, overheads."""
    from edge_search.devices.emulation.boards import predict_work
    from edge_search.devices.emulation.physics import model_work

    gpu = wants_gpu(target, knobs)
    runtime = gpu_runtime(target, knobs) if gpu else "ort"
    prec: str = model_precision(graph_costs(model_path, shapes))
    if prec == "fp16" and not gpu:
        warnings.append(f"{target.name}: fp16 on the CPU path is predicted with the fp32 rates")
        prec = "fp32"
    if gpu and prec == "int8" and target.accelerator is not None and "Maxwell" in target.accelerator.name:
        raise InputError(f"device '{target.name}': int8 is not supported on its GPU ({target.accelerator.name} "
                         "has no int8 path); use fp16 or fp32, or the CPU path")
    if gpu and prec == "int8":
        warnings.append(f"{target.name}: no published int8 GPU figures; int8 GPU prediction is the fp16 "
                        "efficiency at the int8 peak (prior only)")
    work = model_work(model_path, shapes)
    threads = 1 if gpu else knobs.intra_op_threads
    pred = predict_work(target, work, prec, threads, runtime)
    carried = Carried(
        pred.median_ms,
        {k: {"target_ms": v} for k, v in pred.parts.items() if k not in ("overhead",)},
        pred.parts.get("overhead", 0.0),
        [],
    )
    stats = prediction_stats(target, carried, knobs, gpu, method, peak_memory_mb, warnings, band_override=pred.band)
    ph = target.calibration.physics
    extra = {
        **stats.extra,
        "runtime": runtime,
        "precision": prec,
        "work": work.work,
        "kernels": work.nodes,
        "calibration_source": ph.source if ph else stats.extra["calibration_source"],
        "validation": (ph.validation.get(f"cpu-{prec}" if not gpu else "gpu") if ph else None),
    }
    return stats.model_copy(update={"extra": extra})


def estimate_graph(
    model_path: Path,
    profile: DeviceProfile,
    knobs: SessionKnobs | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> LatencyStats:
    """Graph-only screen: per-class FLOPs/bytes divided by the target's calibrated rates.

    Nothing is executed, so this is fast and blind to how well the runtime handles this graph;
    the interval is twice the profile's error band to say so. ``extra["method"]`` is "graph".
    """
    path = Path(model_path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    knobs = knobs or SessionKnobs()
    warnings = check_knobs(profile, knobs)
    if profile.calibration.physics is not None:
        return predict_physics(path, profile, knobs, shapes, None, warnings, method="graph")
    gpu = wants_gpu(profile, knobs)
    cal = profile.calibration
    total = 0.0
    out: dict[str, dict[str, float]] = {}
    acc: dict[tuple[str, str], float] = {}
    for c in graph_costs(path, shapes):
        acc[(c.precision, c.op_class)] = acc.get((c.precision, c.op_class), 0.0) + c.work
    for (prec0, op_class), work in sorted(acc.items()):
        prec = _target_precision(profile, prec0, gpu, warnings)
        rate = cal.rate(prec, op_class, class_group(op_class), gpu)
        if rate is None:
            raise InputError(
                f"device '{profile.name}' has no calibrated rate for {prec}.{op_class}; "
                "a graph estimate needs one (run `edge-search calibrate`)"
            )
        speedup = 1.0 if gpu else cal.speedup(knobs.intra_op_threads, prec, op_class)
        t = work / (rate * 1e6) / speedup
        total += t
        out[f"{prec0}.{op_class}"] = {"work": work, "target_ms": t, "speedup": speedup}
    overhead = cal.overhead_ms(gpu)
    carried = Carried(total + overhead, out, overhead, warnings)
    stats = prediction_stats(profile, carried, knobs, gpu, "graph", None, [])
    band = 2.0 * stats.extra["error_band"]
    m = stats.median_ms
    return stats.model_copy(
        update={
            "ci_low_ms": m / (1 + band),
            "ci_high_ms": m * (1 + band),
            "extra": {**stats.extra, "error_band": band},
        }
    )
