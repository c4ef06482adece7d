"""How often a running trial says it is alive, and how long silence means its process is gone.

Kept apart from `edge_search.recovery` (which imports Optuna) so that the CLI's argument parser and
the driver seam can name the settings without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_search.errors import InputError

DEFAULT_INTERVAL_S = 10
DEFAULT_GRACE_S = 60


@dataclass(frozen=True)
class HeartbeatSettings:
    """How often a running trial says it is alive, and how long silence means its process is dead
    (or frozen) and its trial is redone (`edge_search.recovery`)."""

    interval_s: int = DEFAULT_INTERVAL_S
    grace_s: int = DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        if self.interval_s < 1:
            raise InputError("--heartbeat-interval must be at least 1 second")
        if self.grace_s < 2 * self.interval_s:
            raise InputError(f"--grace-period ({self.grace_s} s) must be at least twice the heartbeat "
                             f"interval ({self.interval_s} s)")
