"""``python -m edge_search.devices.worker``: one measurement in this process (see the package docstring)."""

import sys

from edge_search.devices.worker.entry import main

sys.exit(main())
