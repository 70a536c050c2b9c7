"""docs/robustness.md's case -> behaviour table is exactly the hostile-input tests' markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_robustness_table_matches_the_marked_tests():
    spec = importlib.util.spec_from_file_location("robustness_table", ROOT / "tools" / "robustness_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.cases()
    assert len(rows) >= 10  # every hostile case of issue 17 has its test
    assert mod.current() == mod.render(rows), "run: python tools/robustness_table.py --write"
