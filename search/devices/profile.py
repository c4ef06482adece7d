"""Device profiles: YAML files describing a target device and how its latency is obtained.

Profiles ship in the package (`device_profiles/*.yaml`); users add their own with `--profiles DIR`.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_search.errors import InputError

PROFILE_SCHEMA_VERSION = 1

Precision = Literal["fp32", "fp16", "int8", "int4"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sourced(_Strict):
    """A number with where it came from."""

    value: float
    source: str = Field(min_length=1)


class CpuSpec(_Strict):
    architecture: Literal["x86_64", "aarch64", "armv7"]
    core_type: str
    cores: int = Field(ge=1)
    clock_ghz: float = Field(gt=0)
    simd: tuple[str, ...] = ()
    int8_dot_product: bool = False
    fp16_arithmetic: bool = False


class MemorySpec(_Strict):
    ram_mb: float = Field(gt=0)
    bandwidth_gb_s: float = Field(gt=0)
    reserve_mb: float = Field(256, ge=0)
    """Memory kept back for the OS and the application around the model."""


class AcceleratorSpec(_Strict):
    name: str
    kind: Literal["gpu", "npu", "dsp"]
    fp16_tflops: float | None = None


class PowerSpec(_Strict):
    idle_w: float = Field(ge=0)
    tdp_w: float = Field(gt=0)
    source: str = Field(min_length=1)


class AgentAddress(_Strict):
    url: str
    token_file: str | None = None


class LatencySpec(_Strict):
    """How latency is obtained for this profile."""

    method: Literal["local", "agent", "emulated"]
    agents: tuple[AgentAddress, ...] = ()
    cores: tuple[int, ...] | None = None
    """For `local`: the CPU cores measurements may be pinned to (default: all)."""


class Calibration(_Strict):
    """Factors that carry per-node host time to this device; every number has a source."""

    runtime_note: str = ""
    """E.g. 'cross-runtime: fitted to TFLite XNNPACK figures'."""
    fitted_at: str = ""
    params: dict[str, Sourced] = Field(default_factory=dict)
    thread_scaling: dict[int, Sourced] = Field(default_factory=dict)
    """Speed-up at n threads relative to 1 thread."""
    error_band: Sourced | None = None
    """Relative half-width of the prediction interval (from the fit's residuals)."""


class DeviceProfile(_Strict):
    schema_version: int = PROFILE_SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    version: str = "1"
    cpu: CpuSpec
    memory: MemorySpec
    accelerator: AcceleratorSpec | None = None
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    precisions: tuple[Precision, ...] = ("fp32", "int8")
    power: PowerSpec | None = None
    latency: LatencySpec
    calibration: Calibration = Field(default_factory=Calibration)
    sources: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        if self.schema_version != PROFILE_SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported")
        if self.latency.method == "agent" and not self.latency.agents:
            raise ValueError("latency.method 'agent' needs at least one entry in latency.agents")
        return self

    @property
    def usable_memory_mb(self) -> float:
        return self.memory.ram_mb - self.memory.reserve_mb


def _format_validation(path: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{path}: {loc}: {first['msg']}"


def parse_profile(data: Any, origin: str) -> DeviceProfile:
    """Validate profile data; errors name the file, the field and the reason."""
    if not isinstance(data, dict):
        raise InputError(f"{origin}: a device profile must be a mapping")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as err:
        raise InputError(_format_validation(origin, err)) from None


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
