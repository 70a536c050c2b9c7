"""docs/robustness.md's case -> behaviour table is exactly the hostile-input tests' markers."""

from __future__ import annotations

import importlib


def test_robustness_table_matches_the_marked_tests():
    mod = importlib.import_module("tools.robustness_table")
    rows = mod.cases()
    assert len(rows) >= 10  # every hostile case of issue 17 has its test
    assert mod.current() == mod.render(rows), "run: python -m tools.robustness_table --write"
