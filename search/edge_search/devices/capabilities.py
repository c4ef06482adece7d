"""What a device can run: its execution providers (the `execution_provider` deploy knob) and the
precisions of each path (CPU or accelerator), with the reason for everything it cannot.

`device_capabilities(profile)` is asked once per search (`Pipeline`, the space's `available_only`
choices, `check_deploy`): a provider is offered when the profile lists it and, for a device measured
on this machine (``latency.method: local``), ONNX Runtime here reports it available; an emulated
profile offers what it lists and has calibrated rates for. Each offered provider is a path (CPU or
the accelerator) with its own precisions: a Jetson's GPU runs fp16, its A57 cores do not; a
Maxwell GPU has no int8 path (the profile's ``accelerator.unsupported_precisions`` says why).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edge_search.devices.profile import DeviceProfile
from edge_search.errors import InvalidConfig

#: `execution_provider` knob value -> ONNX Runtime providers of the session, in priority order (the
#: first is the path; the rest take the nodes it cannot run, as ONNX Runtime's documentation advises).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}


@functools.cache
def ort_available_providers() -> tuple[str, ...]:
    """Execution providers ONNX Runtime reports available on this machine (asked once per process)."""
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


@dataclass(frozen=True)
class ProviderPath:
    """One offered `execution_provider`: where it runs and which precisions it takes."""

    knob: str
    providers: tuple[str, ...]
    gpu: bool
    """True when the provider runs on the profile's accelerator (the emulator's GPU path)."""
    precisions: tuple[str, ...]
    """Device precisions (fp32, fp16, int8, ...) this path runs."""
    refused_precisions: Mapping[str, str] = field(default_factory=dict)
    """Precision -> why this path does not run it, where the profile or the calibration says."""

    @property
    def label(self) -> str:
        return f"the {'GPU' if self.gpu else 'CPU'} path ({self.knob})"


@dataclass(frozen=True)
class DeviceCapabilities:
    """The execution providers a device offers (`paths`) and why the others are refused."""

    device: str
    paths: Mapping[str, ProviderPath]
    refused: Mapping[str, str]
    """`execution_provider` value -> the reason it cannot be used on this device."""

    @property
    def providers(self) -> tuple[str, ...]:
        """Offered `execution_provider` values, in `PROVIDERS` order."""
        return tuple(k for k in PROVIDERS if k in self.paths)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Device precisions some offered path runs."""
        return tuple(dict.fromkeys(p for path in self.paths.values() for p in path.precisions))

    def path(self, knob: str) -> ProviderPath:
        """The path for `knob`; raises `InvalidConfig` with the reason when it is refused."""
        if knob in self.paths:
            return self.paths[knob]
        reason = self.refused.get(knob, f"unknown execution provider (known: {', '.join(PROVIDERS)})")
        raise InvalidConfig(f"execution_provider {knob} is refused on device '{self.device}': {reason}")


def _calibrated(profile: DeviceProfile, precision: str, gpu: bool) -> bool:
    prefix = f"{'gpu.' if gpu else ''}rate.{precision}."
    return any(k.startswith(prefix) for k in profile.calibration.params)


def device_capabilities(profile: DeviceProfile, available: Sequence[str] | None = None) -> DeviceCapabilities:
    """What `profile`'s device can run (module docstring). `available`: the providers ONNX Runtime
    offers on the measuring machine; default: this machine's for a ``local`` profile, not checked
    otherwise (an agent's board refuses what its own ONNX Runtime lacks; an emulator predicts)."""
    method = profile.latency.method
    if available is None and method == "local":
        available = ort_available_providers()
    paths: dict[str, ProviderPath] = {}
    refused: dict[str, str] = {}
    for knob, providers in PROVIDERS.items():
        primary = providers[0]
        if primary not in profile.execution_providers:
            refused[knob] = (f"the profile lists no {primary} (it has {', '.join(profile.execution_providers)})")
            continue
        if available is not None and primary not in available:
            refused[knob] = (f"ONNX Runtime on this machine does not offer {primary} (available: "
                             f"{', '.join(available)}); measuring would fall back to the CPU")
            continue
        gpu = primary in profile.gpu_providers
        precisions = profile.gpu_precisions if gpu else tuple(profile.precisions)
        notes: dict[str, str] = {}
        if gpu and profile.accelerator is not None:
            notes.update({str(k): v for k, v in profile.accelerator.unsupported_precisions.items()})
        if not gpu and not profile.cpu.fp16_arithmetic:
            notes.setdefault("fp16", f"the {profile.cpu.core_type} cores have no fp16 arithmetic (and ONNX "
                                     "Runtime's CPU provider no fast fp16 kernels)")
        if method == "emulated" and profile.calibration.params:
            for prec in precisions:
                if prec != "fp16" and not _calibrated(profile, prec, gpu):
                    notes[prec] = (f"the profile has no calibrated {prec} rates on its "
                                   f"{'GPU' if gpu else 'CPU'} path, so nothing to predict it from")
            precisions = tuple(p for p in precisions if p == "fp16" or _calibrated(profile, p, gpu))
        paths[knob] = ProviderPath(knob, providers, gpu, precisions, notes)
    return DeviceCapabilities(profile.name, paths, refused)


__all__ = ["PROVIDERS", "DeviceCapabilities", "ProviderPath", "device_capabilities", "ort_available_providers"]
