"""`python tools/benchmark [flags]`: run the benchmark (see benchmark/__init__.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tools/: the package is `benchmark`

from benchmark.cli import main  # noqa: E402

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("benchmark: interrupted; finished cells are saved in benchmarks/results.json — rerun the same command "
              "to continue.", file=sys.stderr)
        sys.exit(130)
