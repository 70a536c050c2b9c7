import sys

from rlprune_edge.cli import main

sys.exit(main())
