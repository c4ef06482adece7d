"""Device profiles: YAML files describing a target device and how its latency is obtained.

Profiles ship in the package (`device_profiles/*.yaml`); users add their own with `--profiles DIR`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from edge_search.errors import InputError
from edge_search.schema import StrictModel, format_validation_error

PROFILE_SCHEMA_VERSION = 1

Precision = Literal["fp32", "fp16", "int8", "int4"]


class Sourced(StrictModel):
    """A number with where it came from."""

    value: float
    source: str = Field(min_length=1)


class CpuSpec(StrictModel):
    architecture: Literal["x86_64", "aarch64", "armv7"]
    core_type: str
    cores: int = Field(ge=1)
    clock_ghz: float = Field(gt=0)
    simd: tuple[str, ...] = ()
    int8_dot_product: bool = False
    """Armv8.2 SDOT/UDOT or x86 VNNI: int8 convolutions gain much more over fp32 with it."""
    fp16_arithmetic: bool = False


class MemorySpec(StrictModel):
    ram_mb: float = Field(gt=0)
    bandwidth_gb_s: float = Field(gt=0)
    reserve_mb: float = Field(256, ge=0)
    """Memory kept back for the OS and the application around the model."""


class AcceleratorSpec(StrictModel):
    name: str
    kind: Literal["gpu", "npu", "dsp"]
    fp16_tflops: float | None = Field(None, gt=0)
    fp32_tflops: float | None = Field(None, gt=0)
    cores: int | None = Field(None, ge=1)
    shares_ram: bool = True
    """True when the accelerator uses the board's RAM (Jetson): the model counts against `memory.ram_mb`."""
    execution_providers: tuple[str, ...] = ()
    """ONNX Runtime execution providers that run on the accelerator."""
    precisions: tuple[Precision, ...] | None = None
    """Precisions the accelerator path runs (None: the profile's `precisions`)."""
    unsupported_precisions: dict[Precision, str] = Field(default_factory=dict)
    """Why a precision has no accelerator path (e.g. int8 on a Maxwell GPU): said when it is refused."""


class PowerSpec(StrictModel):
    idle_w: float = Field(ge=0)
    tdp_w: float = Field(gt=0)
    source: str = Field(min_length=1)


class AgentAddress(StrictModel):
    """One agent of a pool: its URL, token file and, for ``https://``, how its certificate is checked.

    Paths take ``~`` and are relative to the working directory.
    """

    url: str
    token_file: str | None = None
    ca_file: str | None = None
    """PEM file of the CA (or the self-signed certificate) the agent's certificate must chain to;
    default: the system's trust store. Only for ``https://`` URLs."""
    verify: bool = True
    """False: the agent's certificate is not checked (traffic is still encrypted; a test rig only)."""

    @model_validator(mode="after")
    def _tls(self) -> AgentAddress:
        https = self.url.lower().startswith("https://")
        if not https and (self.ca_file is not None or not self.verify):
            raise ValueError(f"ca_file and verify apply to https:// agents, not {self.url}")
        if self.ca_file is not None and not self.verify:
            raise ValueError("give ca_file (verify against it) or verify: false, not both")
        return self


class LatencySpec(StrictModel):
    """How latency is obtained for this profile."""

    method: Literal["local", "agent", "emulated"]
    agents: tuple[AgentAddress, ...] = ()
    cores: tuple[int, ...] | None = None
    """For `local`: the CPU cores measurements may be pinned to (default: all)."""


OP_CLASSES = ("conv_kxk", "depthwise", "pointwise", "gemm", "elementwise", "other")
"""Node classes the emulator carries separately (see `edge_search.devices.emulation.opclass`)."""
CLASS_GROUPS = ("compute", "memory")
_PREC = "fp32|fp16|int8"
_CLS = "|".join(OP_CLASSES + CLASS_GROUPS)
PARAM_KEY = re.compile(rf"^(gpu\.)?(overhead_ms|profile_overhead_us|profile_scale|rate\.({_PREC})\.({_CLS}))$")
SCALING_KEY = re.compile(rf"^(gpu\.)?(({_PREC})(\.({_CLS}))?|{_CLS})$")


class PhysicsFit(StrictModel):
    """The physics model's fitted numbers for one device (`edge_search.devices.emulation.fit`).

    `params` keys: ``cpu.peak.<precision>`` / ``cpu.bandwidth_gb_s`` / ``gpu.peak.<precision>``
    (the datasheet prior), ``cpu.eff.<precision>.<work class>`` (fraction of the peak ONNX Runtime
    reaches at one thread), ``cpu.eta.<compute|memory>`` (thread scaling 1 + (n-1) eta),
    ``cpu.overhead_ms``, ``cpu.node_us``, and per GPU runtime ``gpu.<runtime>.eff.<precision>.<group>``,
    ``gpu.<runtime>.overhead_ms``, ``gpu.<runtime>.node_us``. `bands` holds the relative half-width
    of the interval per path (``cpu-fp32``, ``cpu-int8``, ``gpu``) from leave-one-family-out errors;
    `validation` the held-out figures per path.
    """

    method: str = "physics-v1"
    source: str = Field(min_length=1)
    fitted_at: str = ""
    params: dict[str, Sourced] = Field(default_factory=dict)
    bands: dict[str, Sourced] = Field(default_factory=dict)
    validation: dict[str, dict[str, float]] = Field(default_factory=dict)


class Calibration(StrictModel):
    """Numbers that carry per-node host time to this device; every number has a source.

    `params` keys (checked when the profile is loaded):
    - ``overhead_ms``: fixed per-inference cost (session run, input copy, scheduling);
    - ``profile_overhead_us`` (host profiles): what ORT's profiler adds to each profiled node, taken
      off every node's host time before it is carried;
    - ``profile_scale`` (host profiles): end-to-end time over the profiled node times (less the
      profiler's cost): each node's profiled time is its fastest execution over the profiled runs, and
      the sum of per-node fastest executions is below any whole run; absent = 1;
    - ``rate.<precision>.<class or group>``: effective single-thread throughput of an op class,
      GFLOP/s for compute-bound classes (conv_kxk, pointwise, gemm; group ``compute``) and GB/s for
      memory-bound ones (depthwise, elementwise, other; group ``memory``);
    - the same keys prefixed ``gpu.`` for the accelerator path (used when a session asks for a GPU
      execution provider the profile lists).
    `thread_scaling` is the default speed-up at n threads over 1 thread; `thread_scaling_by`
    overrides it per ``<precision>``, ``<class>`` or ``<precision>.<class>`` (most specific wins).
    """

    source: str = ""
    """Where the calibration comes from (required as soon as there is any number)."""
    runtime_note: str = ""
    """E.g. 'cross-runtime: fitted to TFLite XNNPACK figures'."""
    fitted_at: str = ""
    reference_host: str = ""
    """The host whose per-node profiles the rates were fitted against (CPU model, ORT version)."""
    params: dict[str, Sourced] = Field(default_factory=dict)
    thread_scaling: dict[int, Sourced] = Field(default_factory=dict)
    """Speed-up at n threads relative to 1 thread."""
    thread_scaling_by: dict[str, dict[int, Sourced]] = Field(default_factory=dict)
    error_band: Sourced | None = None
    """Relative half-width of the prediction interval (from the fit's residuals)."""
    error_band_gpu: Sourced | None = None
    """The same for the accelerator path, where it has its own calibration."""
    fit_stats: dict[str, float] = Field(default_factory=dict)
    """Figures of the fit that produced the numbers (MAPE, share within ±20 %, n)."""
    physics: PhysicsFit | None = None
    """The roofline-prior model fitted to published data (used instead of the per-class host carry
    when present; see `edge_search.devices.emulation.fit`)."""

    @model_validator(mode="after")
    def _check(self) -> Calibration:
        for key in self.params:
            if not PARAM_KEY.match(key):
                raise ValueError(
                    f"unknown calibration parameter '{key}' (expected overhead_ms, profile_overhead_us, "
                    f"profile_scale or rate.<fp32|fp16|int8>.<{'|'.join(OP_CLASSES + CLASS_GROUPS)}>)"
                )
        for key in self.thread_scaling_by:
            if not SCALING_KEY.match(key):
                raise ValueError(f"unknown thread_scaling_by key '{key}'")
        for curve in (self.thread_scaling, *self.thread_scaling_by.values()):
            for n, s in curve.items():
                if n < 1 or s.value <= 0:
                    raise ValueError(f"thread scaling {n}: {s.value}: need n >= 1 and a positive speed-up")
        has_numbers = bool(
            self.physics
            or self.params
            or self.thread_scaling
            or self.thread_scaling_by
            or self.error_band
            or self.error_band_gpu
        )
        if has_numbers and not self.source.strip():
            raise ValueError(
                "calibration.source is required when the calibration holds numbers (say where they come from)"
            )
        for key, val in self.params.items():
            if val.value < 0 or (key.startswith(("rate.", "gpu.rate.")) and val.value == 0):
                raise ValueError(f"calibration parameter '{key}' must be positive")
        return self

    def rate(self, precision: str, op_class: str, group: str, gpu: bool = False) -> float | None:
        """Calibrated throughput for a class (falling back to its group), or None when uncalibrated."""
        prefix = "gpu." if gpu else ""
        for key in (f"{prefix}rate.{precision}.{op_class}", f"{prefix}rate.{precision}.{group}"):
            if key in self.params:
                return self.params[key].value
        return None

    def overhead_ms(self, gpu: bool = False) -> float:
        """Fixed per-inference cost in ms (0 when uncalibrated)."""
        p = self.params.get("gpu.overhead_ms" if gpu else "overhead_ms")
        return p.value if p else 0.0

    def speedup(self, threads: int, precision: str, op_class: str, gpu: bool = False) -> float:
        """Speed-up at `threads` over 1 thread: most specific curve, linear interpolation, flat beyond."""
        prefix = "gpu." if gpu else ""
        curve = self.thread_scaling
        for key in (f"{prefix}{precision}.{op_class}", f"{prefix}{op_class}", f"{prefix}{precision}"):
            if key in self.thread_scaling_by:
                curve = self.thread_scaling_by[key]
                break
        points = {1: 1.0, **{n: s.value for n, s in curve.items()}}
        ns = sorted(points)
        if threads in points:
            return points[threads]
        if threads > ns[-1]:
            return points[ns[-1]]
        lo = max(n for n in ns if n < threads)
        hi = min(n for n in ns if n > threads)
        w = (threads - lo) / (hi - lo)
        return points[lo] * (1 - w) + points[hi] * w


class DeviceProfile(StrictModel):
    schema_version: int = PROFILE_SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    version: str = "1"
    cpu: CpuSpec
    memory: MemorySpec
    accelerator: AcceleratorSpec | None = None
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    precisions: tuple[Precision, ...] = ("fp32", "int8")
    """Precisions the CPU path runs (an accelerator's own are `accelerator.precisions`)."""
    power: PowerSpec | None = None
    latency: LatencySpec
    calibration: Calibration = Field(default_factory=Calibration)
    sources: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        if self.schema_version != PROFILE_SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported")
        if self.memory.reserve_mb >= self.memory.ram_mb:
            raise ValueError("memory.reserve_mb must be smaller than memory.ram_mb")
        if self.latency.method == "agent" and not self.latency.agents:
            raise ValueError("latency.method 'agent' needs at least one entry in latency.agents")
        return self

    @property
    def usable_memory_mb(self) -> float:
        """RAM a model may use: the board's RAM less the reserve for the OS and application."""
        return self.memory.ram_mb - self.memory.reserve_mb

    @property
    def gpu_precisions(self) -> tuple[str, ...]:
        """Precisions the accelerator path runs (empty without an accelerator)."""
        if self.accelerator is None:
            return ()
        return tuple(self.accelerator.precisions if self.accelerator.precisions is not None else self.precisions)

    @property
    def gpu_providers(self) -> tuple[str, ...]:
        """Execution providers that run on the accelerator (empty without one)."""
        return self.accelerator.execution_providers if self.accelerator else ()


def parse_profile(data: Any, origin: str) -> DeviceProfile:
    """Validate profile data; errors name the file, the field and the reason."""
    if not isinstance(data, dict):
        raise InputError(f"{origin}: a device profile must be a mapping")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as err:
        message = format_validation_error(origin, err, example="device_profiles/host.yaml for the format")
        raise InputError(message) from None


def load_profile_file(path: Path) -> DeviceProfile:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_profile(data, str(path))


def _builtin_files() -> list[tuple[str, str]]:
    root = resources.files("edge_search.device_profiles")
    return sorted((p.name, p.read_text()) for p in root.iterdir() if p.name.endswith(".yaml"))


def load_profiles(extra_dirs: Iterable[Path] = ()) -> dict[str, DeviceProfile]:
    """Built-in profiles, then those in `extra_dirs` (a user's file overrides a built-in one)."""
    profiles: dict[str, DeviceProfile] = {}
    for fname, text in _builtin_files():
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:  # pragma: no cover - shipped files are tested
            raise InputError(f"{fname}: not valid YAML: {err}") from None
        prof = parse_profile(data, f"device_profiles/{fname}")
        profiles[prof.name] = prof
    for d in extra_dirs:
        d = Path(d)
        if not d.exists():
            raise InputError(f"{d}: no such profile file or folder")
        files = [d] if d.is_file() else sorted(d.glob("*.yaml"))
        for f in files:
            prof = load_profile_file(f)
            profiles[prof.name] = prof
    return profiles


def get_profile(name: str, extra_dirs: Iterable[Path] = ()) -> DeviceProfile:
    profiles = load_profiles(extra_dirs)
    if name not in profiles:
        known = ", ".join(sorted(profiles))
        raise InputError(f"unknown device '{name}' (known: {known}; add one with --profiles DIR)")
    return profiles[name]
