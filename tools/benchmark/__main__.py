"""`python -m tools.benchmark [flags]` from the repository root: run the benchmark (see tools/benchmark/__init__.py)."""

import sys

from tools.benchmark.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("benchmark: interrupted; finished cells are saved in benchmarks/results.json — rerun the same command "
              "to continue.", file=sys.stderr)
        sys.exit(130)
