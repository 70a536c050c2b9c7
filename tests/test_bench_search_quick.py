"""tools/bench_search.py --quick end to end in a temp dir: every method runs, finals are re-measured
together, the generated section has a row per method. Asserts that figures exist, never their values."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "bench_search.py"


@pytest.mark.slow
def test_quick_run_fills_every_method_and_the_section(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("rlprune_bench_search", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nolder text\n")
        assert mod.main(["--quick", "--models", "vgg11:0.125", "--seeds", "0", "--levels", "moderate",
                         "--work", str(tmp_path)]) == 0
    finally:
        sys.modules.pop(spec.name, None)
    doc = json.loads((tmp_path / "benchmarks" / "search_results.json").read_text())
    m = doc["models"]["vgg11-w0.125"]
    assert 0 < m["floor"]["floor_ratio"] and set(m["targets"]) == {"aggressive", "moderate"}
    cell = m["cells"]["moderate/seed0"]
    assert set(cell) == set(mod.METHODS) and all("common_ratio" in cell[k] and 0 <= cell[k]["test_acc"] <= 1
                                                 for k in mod.METHODS)
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert md.count(mod.START) == 1 and "older text" in md
    for meth in mod.METHODS:
        assert f"| {mod.LABELS[meth]} | 1 |" in md
