"""edge-search: joint training + deployment search for edge devices.

The public surface is small: the CLI (`edge-search`), the search space schema, the
`LatencyStats` record every latency is reported as, and the seams (`Task`, `Device`).
"""

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
