"""tools/benchmark --quick end to end: every table and column is produced, reruns resume, bad input exits 2.

Asserts that the figures exist (and are numbers), never what they are.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def bench():
    """tools/benchmark/ imported as the package `benchmark` (a tool, not part of rlprune_edge)."""
    sys.path.insert(0, str(TOOLS))
    try:
        import benchmark

        yield benchmark
    finally:
        sys.path.remove(str(TOOLS))


@pytest.fixture(scope="module")
def quick_run(bench, tmp_path_factory):
    """One --quick run into a temp dir (its own latency-model cache); returns (out_dir, stdout)."""
    root = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
    try:
        out = root / "out"
        rc = bench.main(["--quick", "--quiet", "--out-dir", str(out)])
        assert rc == 0
        yield out
    finally:
        mp.undo()


def _table_rows(md: str, header: tuple[str, ...]) -> list[list[str]]:
    """Data rows of every markdown table in `md` whose header is `header`."""
    lines = md.splitlines()
    head = "| " + " | ".join(header) + " |"
    rows: list[list[str]] = []
    for i, line in enumerate(lines):
        if line == head:
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append([c.strip() for c in lines[j].strip("|").split("|")])
                j += 1
    return rows


def _is_number(text: str) -> bool:
    t = text.replace("×", "").replace(",", "").replace("%", "").replace("+", "").strip()
    try:
        return math.isfinite(float(t))
    except ValueError:
        return False


def test_quick_run_produces_every_table_column_and_plot(bench, quick_run):
    out = quick_run
    doc = json.loads((out / "benchmarks" / "results.json").read_text())
    cells = doc["cells"]
    assert cells and all(r["status"] == "ok" for r in cells.values()), {k: r.get("error") for k, r in cells.items()}
    assert {r["method"] for r in cells.values() if r["kind"] == "pareto"} == set(bench.METHODS)
    assert {r["kind"] for r in cells.values()} == {"base", "fidelity", "pareto", "paper"}
    for r in cells.values():  # paper cells run at the paper's unrounded widths, the others at the profile's
        if r["kind"] in ("paper", "pareto") and r["method"] != "uniform":
            cm = r["command"][r["command"].index("--channel-multiple") + 1] if "--channel-multiple" in r["command"] else None
            assert cm == ("1" if r["kind"] == "paper" else None), r["command"]

    md = (out / "BENCHMARKS.md").read_text()
    for section in ("## How it was measured", "## Base models", "## Pareto comparison", "### Reading",
                    "## Paper-style table", "## Latency-model fidelity"):
        assert section in md, section
    for fact in ("onnxruntime", "logical cores", "timed runs", "interleaved", "thread"):
        assert fact in md, fact

    pareto = _table_rows(md, bench.PARETO_HEADER)
    assert sorted(r[0] for r in pareto) == sorted(bench.METHOD_LABELS[m] for m in bench.METHODS)
    numeric = [i for i, h in enumerate(bench.PARETO_HEADER) if h not in ("method", "target met")]
    for row in pareto:
        assert len(row) == len(bench.PARETO_HEADER)
        assert all(_is_number(row[i]) for i in numeric), row
        assert row[bench.PARETO_HEADER.index("target met")].startswith(("yes", "**no**"))
    paper = _table_rows(md, bench.PAPER_HEADER)
    assert paper and all(len(r) == len(bench.PAPER_HEADER) and all(_is_number(c) for c in r) for r in paper)
    fid = _table_rows(md, bench.FIDELITY_HEADER)
    assert fid and all(len(r) == len(bench.FIDELITY_HEADER) and all(_is_number(c) for c in r[1:]) for r in fid)

    plots = sorted((out / "benchmarks").glob("*.png"))
    assert {p.name for p in plots} >= {"pareto_vgg11-w0.125.png", "latency_fidelity.png"}
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"benchmarks/{p.name}" in md


def test_rerun_reuses_finished_cells(bench, quick_run, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    results = quick_run / "benchmarks" / "results.json"
    before = json.loads(results.read_text())["cells"]
    assert bench.main(["--quick", "--quiet", "--out-dir", str(quick_run)]) == 0
    assert "0 cell(s) run" in capsys.readouterr().out
    assert json.loads(results.read_text())["cells"] == before


def test_bad_input_exits_2_with_one_sentence(bench, quick_run, capsys, tmp_path):
    assert bench.main(["--quick", "--models", "alexnet:1", "--out-dir", str(tmp_path)]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert bench.main(["--quick", "--targets", "1.5", "--out-dir", str(tmp_path)]) == 2
    assert "--targets" in capsys.readouterr().err
    # other settings than the stored results: refused, nothing overwritten
    results = quick_run / "benchmarks" / "results.json"
    before = results.read_text()
    assert bench.main(["--quick", "--kd-images", "64", "--out-dir", str(quick_run)]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "Traceback" not in err
    assert results.read_text() == before


def test_uniform_bisection_picks_smallest_ratio_meeting_the_target(tmp_path):
    """Fake backend whose latency is the ONNX file size (monotone in the pruning ratio): the bisection
    returns the smallest probed ratio that meets the target, prunes every layer alike, leaves the input intact."""
    import os

    import torch

    from rlprune_edge.baselines import bisect_uniform, output_layers
    from rlprune_edge.checkpoint import resolve_model
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.runtimes.backend import Measurement

    class SizeBackend:
        name = "fake"

        def compare(self, paths, *, blocks, warmup, runs):
            sizes = [os.path.getsize(p) for p in paths]
            return [Measurement(s / 1e5, s / 1e5, s / 1e5, [s / 1e5], ratio=s / sizes[0]) for s in sizes]

    torch.manual_seed(0)
    dense, _ = resolve_model("vgg11", width=0.25)
    dense.eval()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    example = torch.zeros(1, 3, 32, 32)
    calib = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))]
    dense_onnx = export_onnx(dense, tmp_path / "dense.onnx", (3, 32, 32))
    res = bisect_uniform(dense, example, 0.5, calib, SizeBackend(), load_profile("host-cpu"), dense_onnx, tmp_path,
                         iterations=3, repeats=1)
    assert res.reached and res.measured_ratio <= 0.5
    assert all(p["measured_ratio"] > 0.5 for p in res.probes if p["pruning_ratio"] < res.pruning_ratio)
    kept = [m.out_channels / d.out_channels for m, d in zip(
        [m for m in res.model.modules() if isinstance(m, torch.nn.Conv2d)],
        [m for m in dense.modules() if isinstance(m, torch.nn.Conv2d)], strict=True)]
    assert max(kept) - min(kept) < 0.1  # uniform: every layer keeps about the same fraction
    assert output_layers(res.model, example)[0].out_features == 10
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


def test_unreachable_target_is_a_recorded_result_not_a_failure(bench, quick_run, monkeypatch, tmp_path):
    """compress refusing a target below the model's floor becomes status 'unreachable' with the measured floor;
    it is not retried and BENCHMARKS.md says so in the Pareto section instead of listing it as unfinished."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = json.loads((quick_run / "benchmarks" / "results.json").read_text())
    base = next(r for r in doc["cells"].values() if r["kind"] == "base")
    ckpt = quick_run / base["checkpoint"]
    profile = quick_run / "benchmarks" / "quick-profile.toml"
    with pytest.raises(bench.CellUnreachable) as info:
        bench.run_cli(["compress", "--model", str(ckpt), "--profile", str(profile), "--target-latency", "0.0001ms",
                       "--out", str(tmp_path / "run"), "--quiet"])
    assert "not reachable" in str(info.value)
    assert info.value.floor_ratio is not None and info.value.floor_ratio > 0
    assert not (tmp_path / "run").exists()

    label = base["label"]
    cell_id = f"pareto/{label}/0.01x/latency/seed0"
    doc["cells"][cell_id] = {"kind": "pareto", "model": base["model"], "width": base["width"], "label": label,
                             "method": "latency", "target": 0.01, "sparsity": 0.0, "seed": 0,
                             "status": "unreachable", "error": str(info.value), "floor_ratio": info.value.floor_ratio}
    out = tmp_path / "render"
    bench.render(doc, out, "tools/benchmark --quick")
    md = (out / "BENCHMARKS.md").read_text()
    assert "Target 0.01× dense latency:" in md
    assert f"{info.value.floor_ratio:.2f}–{info.value.floor_ratio:.2f}× dense" in md
    assert f"{label} @ 0.01×: below this model's floor" in md
    assert "## Cells that did not finish" not in md
    settings = bench.Settings(**doc["settings"])
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    (out / "benchmarks" / "results.json").write_text(json.dumps(doc))
    assert bench.Results(out / "benchmarks" / "results.json", settings, fresh=False).done(cell_id)


def test_paired_reading_counts_wins_losses_and_trade_offs_per_seed(bench):
    def rec(method, seed, acc, ratio):
        return {"label": "m", "target": 0.5, "method": method, "seed": seed, "test_acc": acc, "common_ratio": ratio}

    rows = [rec("latency", 0, 0.90, 0.50), rec("flops", 0, 0.88, 0.50),   # win: more accurate, same latency
            rec("latency", 1, 0.85, 0.50), rec("flops", 1, 0.86, 0.49),   # loss: less accurate, other no slower
            rec("latency", 2, 0.90, 0.60), rec("flops", 2, 0.80, 0.45)]   # trade-off: more accurate but slower
    lines = bench._paired_lines({("m", 0.5): rows})
    assert len(lines) == 1
    assert "FLOPs reward: 1 win(s), 1 loss(es), 1 trade-off(s) over 3 seeds" in lines[0]
    assert "per seed +2.0, -1.0, +10.0" in lines[0] and "accuracy reward" not in lines[0]
    assert bench._paired_lines({("m", 0.5): rows[:2]}) == []  # one seed: nothing to pair


def test_uniform_prune_with_round_to_is_monotonic_and_keeps_round_to_channels():
    """Torch-Pruning rounds kept channels *down* to round_to; uncapped, a 16-channel layer asked to keep
    1.6 channels keeps all 16. The baseline caps each layer so a larger ratio never prunes less."""
    import torch

    from rlprune_edge.baselines import uniform_taylor_prune
    from rlprune_edge.checkpoint import resolve_model

    model, info = resolve_model("resnet20", width=0.5, num_classes=10)  # groups of 8/16/32 channels
    x = torch.randn(1, *info.input_shape)
    calib = [(torch.randn(4, *info.input_shape), torch.randint(0, 10, (4,)))]
    sizes = []
    for ratio in (0.3, 0.6, 0.9):
        pruned = uniform_taylor_prune(model, x, ratio, calib, round_to=8)
        convs = [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
        assert min(convs) >= 8 and all(c % 8 == 0 for c in convs), convs
        sizes.append(sum(p.numel() for p in pruned.parameters()))
    dense = sum(p.numel() for p in model.parameters())
    assert dense > sizes[0] >= sizes[1] >= sizes[2]
    assert sizes[2] < sizes[0]  # 0.9 really prunes more than 0.3 (it pruned nothing before the cap)
