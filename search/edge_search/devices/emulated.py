"""`EmulatedDevice`: latency predicted for a device the user does not have, with an honest interval.

A profile with a physics calibration (``calibration.physics``; every shipped board) is predicted by
`carry.predict_physics`: the model's work per op class from its graph, divided by the board's
roofline peaks times fitted efficiencies, thread scaling and overheads, with the band of the path
from leave-one-family-out errors (see `edge_search.devices.emulation.fit`); the host only measures
peak memory. A profile without one (e.g. written by `calibrate --device host`) uses the per-class
host carry below.

How a host-carry prediction is made (`EmulatedDevice.measure`):

1. The model is profiled **on this host at one intra-op thread** with ONNX Runtime's per-node
   profiler (through `LocalDevice.profile_nodes`, in a pinned worker under the host's lease), with
   the request's graph-optimisation level. One thread, always: the host cannot honour a target's
   thread count (4 threads of a 4-core Pi on a 2-core host would oversubscribe it), and host
   multi-thread times would carry the host's scaling, not the target's.
2. Each profiled node is classified (`opclass`: conv_kxk, depthwise, pointwise, gemm,
   elementwise, other; fp32/fp16/int8) and the host times are summed per (precision, class).
3. Each class sum is carried to the target: ``t_target = t_host * R_host / R_target``, where R are
   the calibrated single-thread throughputs of that class on the host and on the target (GFLOP/s
   for compute-bound classes, GB/s for memory-bound ones, see `DeviceProfile.calibration`), then
   divided by the target's thread speed-up for that precision/class at the requested thread count
   (a curve fitted to the target's own multi-thread data; it saturates where the data does).
4. The target's fixed per-inference overhead is added. The interval is the profile's error band
   (a relative half-width from the calibration's residuals) applied multiplicatively:
   ``[t / (1 + b), t * (1 + b)]``.
5. Peak memory is a real host measurement (`LocalDevice.measure`) and is compared with the
   target's RAM less its reserve: ``extra["fits_memory"]`` says whether the model fits.

Knobs the emulator does not model are reported in ``warnings`` rather than silently ignored:
inter-op threads / parallel execution (modelled as sequential), threads beyond the target's cores
(refused with `InputError`), fp16 on a CPU without fp16 arithmetic (carried with the fp32 rates).
An fp16 model is profiled as its float32 twin on a host without fp16 arithmetic and carried with
the target path's fp16 rates (a GPU's), see `edge_search.devices.emulation.fp16`.
Tail percentiles are not predicted: p90/p95/p99 equal the predicted median, and a warning says so.

The carry and its `LatencyStats` are `edge_search.devices.emulation.carry`, which also holds
`estimate_graph`, the cheap screen: the same carry from graph FLOPs/bytes, nothing executed.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from edge_search.devices.base import Device, MeasureRequest, SessionKnobs
from edge_search.devices.emulation.carry import (
    HostBreakdown,
    breakdown_from_nodes,
    carry,
    check_knobs,
    predict_physics,
    prediction_stats,
    wants_gpu,
)
from edge_search.devices.emulation.fp16 import as_fp16, fp32_twin, is_fp16_model
from edge_search.devices.profile import DeviceProfile, get_profile
from edge_search.devices.stats import LatencyStats
from edge_search.devices.worker.probes import host_id
from edge_search.errors import InputError

log = logging.getLogger(__name__)


def host_mismatch(reference_host: str, this_host: str | None = None) -> str | None:
    """The warning when the host calibration was made on another machine or ONNX Runtime, else None.

    `reference_host` is ``Calibration.reference_host`` ("<cpu model> / onnxruntime <version>"), compared
    with the same string for this machine (`this_host`, default `host_id()`): comparing it with the CPU
    name alone, as before, could never match and warned on every prediction."""
    if not reference_host:
        return None
    here = this_host if this_host is not None else host_id()
    if reference_host.strip() == here.strip():
        return None
    return (
        f"host profile was calibrated on '{reference_host}', this machine is '{here}': "
        "run `edge-search calibrate --device host`"
    )


class EmulatedDevice(Device):
    """Predicts latency on `profile`'s device from single-thread host profiles (module docstring)."""

    latency_source = "emulated"

    def __init__(
        self,
        profile: DeviceProfile,
        host: Device | None = None,
        *,
        host_profile: DeviceProfile | None = None,
        profile_runs: int = 10,
        measure_memory: bool = True,
        profile_dirs: Iterable[Path] = (),
    ) -> None:
        """`host` measures on this machine (default: a `LocalDevice` for the built-in 'host'
        profile, created on first use); `host_profile` holds the host's calibrated rates (default:
        `host`'s profile). `profile_runs` runs are profiled per model; `measure_memory` False skips
        the peak-memory measurement (then ``fits_memory`` is None)."""
        self.profile = profile
        self.name = profile.name
        self._dirs = tuple(profile_dirs)
        self._host = host
        self._host_profile = host_profile
        self.profile_runs = profile_runs
        self.measure_memory = measure_memory
        self._cache: dict[str, HostBreakdown] = {}
        self._memory: dict[str, float | None] = {}

    @property
    def host(self) -> Device:
        """The device host profiles are taken on (`Device.profile_nodes`; created lazily)."""
        if self._host is None:
            from edge_search.devices.local import LocalDevice

            self._host = LocalDevice(get_profile("host", self._dirs))
        return self._host

    @property
    def host_profile(self) -> DeviceProfile:
        """The host profile whose calibrated rates the carry divides by."""
        if self._host_profile is None:
            prof = getattr(self._host, "profile", None)
            self._host_profile = prof if isinstance(prof, DeviceProfile) else get_profile("host", self._dirs)
        return self._host_profile

    def host_breakdown(self, request: MeasureRequest) -> HostBreakdown:
        """Single-thread host profile of the request's model, cached by file hash and knobs."""
        path = Path(request.model_path)
        if not path.is_file():
            raise InputError(f"{path}: no such model file")
        knobs = SessionKnobs(
            intra_op_threads=1,
            inter_op_threads=1,
            graph_optimization=request.session.graph_optimization,
            execution_mode="sequential",
            providers=("CPUExecutionProvider",),
        )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = f"{digest}|{knobs.key()}|{sorted(request.shapes.items())}|{self.measure_memory}"
        if key in self._cache:
            return self._cache[key]
        host_req = request.model_copy(update={"session": knobs})
        twin = is_fp16_model(path) and not self.host_profile.cpu.fp16_arithmetic
        if twin:  # profile the float32 twin, count it as fp16 (see `emulation.fp16`)
            with tempfile.TemporaryDirectory(prefix="es-fp32-twin-") as tmp:
                twin_path = fp32_twin(path, Path(tmp) / "twin.onnx")
                twin_req = host_req.model_copy(update={"model_path": twin_path})
                nodes = self.host.profile_nodes(twin_req, runs=self.profile_runs)
                twin_bd = breakdown_from_nodes(twin_path, nodes, self.profile_runs, dict(request.shapes) or None)
        else:
            nodes = self.host.profile_nodes(host_req, runs=self.profile_runs)
        peak = None
        if self.measure_memory:
            mem_req = host_req.model_copy(
                update={
                    "max_time_s": 0.5,
                    "min_samples": 3,
                    "precision_target": 0.5,
                    "warmup_min_runs": 1,
                    "warmup_min_s": 0.0,
                }
            )
            peak = self.host.measure(mem_req).peak_memory_mb
        if twin:
            bd = replace(as_fp16(twin_bd), peak_memory_mb=peak)
        else:
            bd = breakdown_from_nodes(path, nodes, self.profile_runs, dict(request.shapes) or None, peak)
        self._cache[key] = bd
        return bd

    def host_peak_memory(self, request: MeasureRequest) -> float | None:
        """Peak memory of the request's model measured on this host (None when `measure_memory` is off)."""
        if not self.measure_memory:
            return None
        path = Path(request.model_path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        key = f"mem|{digest}|{request.session.graph_optimization}|{sorted(request.shapes.items())}"
        if key not in self._memory:
            knobs = SessionKnobs(intra_op_threads=1, graph_optimization=request.session.graph_optimization,
                                 providers=("CPUExecutionProvider",))
            mem_req = request.model_copy(update={
                "session": knobs, "max_time_s": 0.5, "min_samples": 3, "precision_target": 0.5,
                "warmup_min_runs": 1, "warmup_min_s": 0.0,
            })
            self._memory[key] = self.host.measure(mem_req).peak_memory_mb
        return self._memory[key]

    def measure(self, request: MeasureRequest) -> LatencyStats:
        """Predict the request's latency on the target (see the module docstring for the method)."""
        warnings = check_knobs(self.profile, request.session)
        if self.profile.calibration.physics is not None:
            path = Path(request.model_path)
            if not path.is_file():
                raise InputError(f"{path}: no such model file")
            shapes = dict(request.shapes) or None
            return predict_physics(path, self.profile, request.session, shapes,
                                   self.host_peak_memory(request), warnings)
        gpu = wants_gpu(self.profile, request.session)
        bd = self.host_breakdown(request)
        host = self.host_profile
        mismatch = host_mismatch(host.calibration.reference_host)
        if mismatch:
            warnings.append(mismatch)
        if bd.unmatched_nodes:
            warnings.append(f"{bd.unmatched_nodes} profiled node(s) could not be matched to the graph")
        carried = carry(bd, host, self.profile, request.session.intra_op_threads, gpu)
        stats = prediction_stats(self.profile, carried, request.session, gpu, "profile", bd.peak_memory_mb, warnings)
        return stats.model_copy(update={"extra": {**stats.extra, "host_profiled_ms": bd.host_ms}})
