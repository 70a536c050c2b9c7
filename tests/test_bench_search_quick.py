"""python -m tools.bench_search --quick end to end in a temp dir: every method runs, finals are re-measured
together, --redo re-runs one method and re-measures all (refused when a kept final's model is gone), the generated
section has a row per method. Asserts that figures exist, never their values. Measured on a tiny test profile
(`--profile`): the workflow is under test, not the host-cpu protocol."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import tiny_profile  # noqa: E402


@pytest.mark.slow
def test_quick_run_fills_every_method_and_the_section(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RLPRUNE_EDGE_CACHE", str(tmp_path / "cache" / "rlprune-edge"))
    mod = importlib.import_module("tools.bench_search")
    profile = tmp_path / "tiny.toml"
    profile.write_text(tiny_profile("tiny-bench"))
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nolder text\n")
    args = ["--quick", "--models", "vgg11:0.125", "--seeds", "0", "--levels", "moderate", "--work", str(tmp_path),
            "--profile", str(profile), "--threads", "1"]
    assert mod.main(args) == 0
    first = json.loads((tmp_path / "benchmarks" / "search_results.json").read_text())
    assert mod.main([*args, "--redo", "/plan$"]) == 0  # the plan search alone again
    results = tmp_path / "benchmarks" / "search_results.json"
    before = results.read_text()
    Path(json.loads(before)["models"]["vgg11-w0.125"]["cells"]["moderate/seed0"]["uniform"]["onnx"]).unlink()
    with pytest.raises(mod.UserError, match="add them to --redo"):  # a kept final that cannot be re-measured
        mod.main([*args, "--redo", "/plan$"])
    assert results.read_text() == before  # refused before anything moved
    doc = json.loads((tmp_path / "benchmarks" / "search_results.json").read_text())
    m = doc["models"]["vgg11-w0.125"]
    assert 0 < m["floor"]["floor_ratio"] and set(m["targets"]) == {"aggressive", "moderate"}
    cell = m["cells"]["moderate/seed0"]
    assert set(cell) == set(mod.METHODS) and all("common_ratio" in cell[k] and 0 <= cell[k]["test_acc"] <= 1
                                                 for k in mod.METHODS)
    assert all("--profile" in cell[k]["command"] for k in mod.METHODS if "command" in cell[k])
    kept = first["models"]["vgg11-w0.125"]["cells"]["moderate/seed0"]
    assert [list(o["results"]) for o in m["superseded"]] == [["plan"]]
    assert m["superseded"][0]["results"]["plan"] == kept["plan"]
    for k in mod.METHODS:  # the others kept their results, all re-measured together again
        if k != "plan":
            assert {a: b for a, b in cell[k].items() if a != "common_ratio"} == \
                   {a: b for a, b in kept[k].items() if a != "common_ratio"}
    assert cell["plan"]["finished"] >= kept["plan"]["finished"]
    md = (tmp_path / "BENCHMARKS.md").read_text()
    assert md.count(mod.START) == 1 and "older text" in md
    for meth in mod.METHODS:
        assert f"| {mod.LABELS[meth]} | 1 |" in md


def test_fixed_levels_are_parsed_and_bad_ones_refused_before_any_run(tmp_path):
    """`--level between=0.45` adds a named fixed target; a bad spec or an unknown `--levels` name is
    refused with one sentence before anything is trained or measured."""
    mod = importlib.import_module("tools.bench_search")
    assert mod.fixed_levels(["between=0.45", "low=0.3"]) == {"between": 0.45, "low": 0.3}
    for bad in (["between"], ["between=1.5"], ["aggressive=0.4"], ["=0.4"], ["x=abc"]):
        with pytest.raises(mod.UserError, match="NAME=RATIO"):
            mod.fixed_levels(bad)
    with pytest.raises(mod.UserError, match="neither aggressive"):
        mod.main(["--levels", "between", "--work", str(tmp_path)])
    assert not (tmp_path / "benchmarks").exists()


def test_model_items_keep_a_torchvision_prefix():
    from tools.bench_search import model_item

    assert model_item("vgg19:0.25") == ("vgg19", 0.25)
    assert model_item("resnet20") == ("resnet20", 1.0)
    assert model_item("torchvision:resnet18") == ("torchvision:resnet18", 1.0)
    assert model_item("torchvision:resnet18:1") == ("torchvision:resnet18", 1.0)
