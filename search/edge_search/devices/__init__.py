"""Where latency comes from: measured on this machine, on a board through an agent, or emulated.

`create_device(profile)` builds the `Device` for a profile's ``latency.method``; implementations
are imported only when asked for, so a missing optional back-end affects only its own method.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_search.devices.base import Device
    from edge_search.devices.profile import DeviceProfile

#: latency.method -> "module:Class" implementing `Device`, constructed as Class(profile, **kwargs).
DEVICE_METHODS: dict[str, str] = {
    "local": "edge_search.devices.local:LocalDevice",
    "emulated": "edge_search.devices.emulated:EmulatedDevice",
    "agent": "edge_search.devices.agent:AgentDevice",
}


def create_device(profile: DeviceProfile, **kwargs: Any) -> Device:
    """The `Device` for `profile` (by its ``latency.method``); `kwargs` go to its constructor.

    Raises `EdgeSearchError` when the method's implementation is not available in this install.
    """
    from edge_search.errors import EdgeSearchError

    method = profile.latency.method
    target = DEVICE_METHODS.get(method)
    if target is None:
        raise EdgeSearchError(f"device '{profile.name}': unknown latency method '{method}'")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise EdgeSearchError(f"device '{profile.name}': latency method '{method}' is not available "
                                  f"in this install ({module_name} is missing)") from None
        raise
    cls = getattr(module, class_name)
    device: Device = cls(profile, **kwargs)
    return device


def thread_cores(profile: DeviceProfile) -> int:
    """Cores a deployment's thread knobs may use: for a local device, the cores measurements are
    pinned to on this machine; otherwise the target's own (`latency.cores` or `cpu.cores`)."""
    if profile.latency.method == "local":
        from edge_search.devices.local import allowed_cores

        return len(allowed_cores(profile))
    cores = profile.latency.cores
    return len(cores) if cores else profile.cpu.cores


__all__ = ["DEVICE_METHODS", "create_device", "thread_cores"]
