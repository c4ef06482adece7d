import sys

from edge_search.cli import main

sys.exit(main())
