"""edge-search: joint training + deployment search for edge devices.

The public surface is small: the CLI (`edge-search`), the search space schema, the
`LatencyStats` record every latency is reported as, and the seams (`Task`, `Device`).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_search.devices.stats import LatencyStats
    from edge_search.errors import EdgeSearchError, InputError
    from edge_search.space import SearchSpace, load_space

__version__ = "0.1.0"

__all__ = [
    "EdgeSearchError",
    "InputError",
    "LatencyStats",
    "SearchSpace",
    "__version__",
    "load_space",
]

_LAZY = {
    "LatencyStats": "edge_search.devices.stats",
    "EdgeSearchError": "edge_search.errors",
    "InputError": "edge_search.errors",
    "SearchSpace": "edge_search.space",
    "load_space": "edge_search.space",
}


def __getattr__(name: str) -> Any:
    """Import the public names on first use, so `edge-search --help` and light commands start fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_search' has no attribute {name!r}")
