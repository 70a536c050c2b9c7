"""Plain units of a VGG as removable blocks: which qualify, removing one, its influence, checkpoints,
the search environment's models without them and the latency predicted for those models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlprune_edge.blocks import (
    block_influence,
    block_members,
    drop_blocks,
    keep_past_units,
    plain_units,
    removed_blocks,
    skippable_blocks,
    unit_groups,
)
from rlprune_edge.models import build_model


def _identity_unit(model: nn.Module, unit: str) -> None:
    """Make a unit compute (almost exactly) the identity on non-negative inputs: a Dirac conv and a
    BatchNorm that passes its input through."""
    conv, bn, _ = (model.get_submodule(p) for p in block_members(model, [unit]))
    nn.init.dirac_(conv.weight)
    bn.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1
    bn.eps = 1e-12


def test_plain_units_are_the_same_shape_convs_after_a_relu():
    assert plain_units(build_model("vgg11", 0.25)) == ["features.11", "features.18", "features.22", "features.25"]
    vgg19 = build_model("vgg19", 0.25)
    # every conv that keeps its width, stage 5's first (after a max-pool) included; never the first conv
    assert skippable_blocks(vgg19) == [f"features.{i}" for i in (3, 10, 17, 20, 23, 30, 33, 36, 40, 43, 46, 49)]
    assert block_members(vgg19, ["features.43"]) == ["features.43", "features.44", "features.45"]
    assert plain_units(build_model("resnet20", 1.0)) == [] and plain_units(build_model("mobilenetv3_large", 0.5)) == []
    from torchvision.models import vgg11_bn

    tv = vgg11_bn(weights=None)
    assert plain_units(tv) == ["features.11", "features.18", "features.22", "features.25"]  # as the zoo VGG-11
    assert skippable_blocks(vgg19, plain=False) == []


def test_removing_an_identity_unit_changes_nothing_and_ranks_it_lowest():
    torch.manual_seed(0)
    model = build_model("vgg11", 0.25).eval()
    _identity_unit(model, "features.18")
    x = torch.randn(4, 3, 32, 32)
    dropped = drop_blocks(model, ["features.18"], copy_model=True)
    assert [type(dropped.features[i]) for i in (18, 19, 20)] == [nn.Identity] * 3
    assert isinstance(model.features[18], nn.Conv2d)  # the original is left alone
    assert torch.allclose(model(x), dropped(x), atol=1e-5)
    assert removed_blocks(dropped, model) == ["features.18"]
    bi = block_influence(model, [x])
    assert set(bi) == set(plain_units(model))
    assert bi["features.18"] == pytest.approx(0.0, abs=1e-5)
    assert min(v for k, v in bi.items() if k != "features.18") > 1e-3
    with pytest.raises(ValueError, match="not a removable block"):
        drop_blocks(model, ["features.15"])  # 256 -> 512: changes the width


def _units_removed_then_pruned(model: nn.Module, x: torch.Tensor, units: list[str]) -> tuple[nn.Module, dict[str, int]]:
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.pruning import prune

    base = drop_blocks(model, units, copy_model=True)
    groups = [g for g in prunable_groups(base, x) if g.prunable]
    keep = {g.name: max(8, g.channels // 2 // 8 * 8) for g in groups}
    return prune(base, x, keep=keep, importance="l1", groups=groups), keep


def test_checkpoint_round_trip_keeps_removed_units(tmp_path):
    from rlprune_edge.checkpoint import ModelInfo, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("vgg11", 0.25).eval()
    x = torch.randn(2, 3, 32, 32)
    small, _ = _units_removed_then_pruned(model, x[:1], ["features.11", "features.22", "features.25"])
    info = ModelInfo("vgg11", 0.25, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, [str(i) for i in range(10)])
    loaded, got = load_checkpoint(save_checkpoint(tmp_path / "m.pt", small, info))
    assert got.removed_blocks == ["features.11", "features.22", "features.25"]
    assert torch.allclose(loaded(x), small.eval()(x), atol=1e-6)


def test_latency_model_predicts_a_vgg_without_its_removed_units(tmp_path, monkeypatch):
    """On a fake runtime whose per-node time is exactly linear in work, the dense model's latency
    model predicts the model with units removed and the rest pruned: the units' layers count zero and
    the layer after a removed unit (or chain of them) reads the first one's input width."""
    from helpers import fake_latency_model

    from rlprune_edge.onnx_io import export_onnx

    torch.manual_seed(0)
    model = build_model("vgg11", 0.5).eval()
    x = torch.randn(1, *model.input_shape)
    lm, backend, groups = fake_latency_model(tmp_path, monkeypatch, model, x)
    units = ["features.18", "features.22", "features.25"]  # 22 and 25 in a chain
    small, keep = _units_removed_then_pruned(model, x, units)
    keep["features.22"] = keep["features.25"] = 8  # the removed units' own groups: must not matter
    io = unit_groups(groups, plain_units(model))
    assert io["features.25"] == ("features.25", "features.22") and io["features.22"] == ("features.22", "features.18")
    seen = keep_past_units(keep, io, units, {g.name: g.channels for g in groups})
    assert seen["features.25"] == seen["features.22"] == keep["features.15"]
    pred = lm.predict(seen, block_members(model, units)) / lm.predict({})
    truth = sum(backend._time(export_onnx(small, tmp_path / "small.onnx", tuple(model.input_shape))).values())
    dense = sum(backend._time(export_onnx(model, tmp_path / "dense.onnx", tuple(model.input_shape))).values())
    assert pred == pytest.approx(truth / dense, rel=0.02)
    assert lm.predict(seen, block_members(model, units)) < lm.predict(keep)


def test_plain_units_are_removed_from_the_output_end_first():
    from rlprune_edge.blocks import removal_priority
    from rlprune_edge.search.depth import depth_plans

    vgg19 = build_model("vgg19", 0.25)
    units = plain_units(vgg19)
    influence = dict.fromkeys(units, 0.5) | {"features.3": 0.1}  # influence would take the first unit first
    prio = removal_priority(vgg19, influence)
    assert sorted(units, key=prio.__getitem__) == units[::-1]
    resnet = build_model("resnet20", 0.5)
    assert removal_priority(resnet, {"layer1.1": 0.3, "layer2.2": 0.2}) == {"layer1.1": 0.3, "layer2.2": 0.2}
    # sets grow `step` units at a time, stopping at the first whose full width fits the goal
    sets = depth_plans(units, prio, lambda rm: 10.0 - len(rm), goal_ms=3.5, limit=6, step=3)
    assert [len(s) for s in sets] == [3, 6, 9] and sets[0] == ("features.43", "features.46", "features.49")
    assert [len(s) for s in depth_plans(units, prio, lambda rm: 10.0, None, limit=6, step=5)] == [5, 10, 12]


def test_compress_removes_vgg_units_end_to_end(tmp_path, monkeypatch):
    """A real (tiny) VGG-11 run: the plain units are offered as depth plans (removed from the output
    end), the plans are built with them gone before pruning, and model.pt rebuilds exactly that."""
    import json

    from helpers import tiny_depth_compress

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.cli import main

    args = tiny_depth_compress(tmp_path, monkeypatch, "vgg11", 0.25)
    out = tmp_path / "out"
    assert main(args) == 0
    s = json.loads((out / "report.json").read_text())["search"]
    assert list(s["removable_blocks"]) == ["features.18", "features.22", "features.25"]  # not the earliest quarter
    depth = [r for r in s["plans"] if r["kind"].startswith("depth") and r["round"] == 0]
    assert [r["removed"] for r in depth] == [["features.25"], ["features.22", "features.25"]]
    model, info = load_checkpoint(out / "model.pt")
    assert (info.removed_blocks or []) == s["removed_blocks"] == s["chosen"]["removed_blocks"]
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_plans_that_differ_only_in_a_removed_units_group_are_one_plan(tmp_path):
    """With a removed unit, its own group's count does not reach the model: the search stores the
    canonical count, and a plan that differs from an earlier one only there is not built again."""
    from test_depth_search import DepthStub, kept_fraction
    from test_plan_search import NAMES, run

    from rlprune_edge.search.plan_search import PlanSearchConfig

    class UnitStub(DepthStub):
        def canonical_keep(self, keep, removed):
            return {**keep, NAMES[1]: keep[NAMES[0]]} if "blk2" in removed else dict(keep)

    env = UnitStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: 0.01 * ("blk2" in rm))
    res = run(env, tmp_path, config=PlanSearchConfig(candidates=12, per_round=6, probe_top=3, ramps=(), seed=0))
    with_unit = [r for r in res.records if "blk2" in (r.get("removed") or ())]
    assert with_unit and all(r["keep"][1] == r["keep"][0] for r in with_unit)
    firsts = {}
    for i, r in enumerate(res.records):
        key = (tuple(r["keep"]), tuple(sorted(r.get("removed") or ())))
        if "duplicate_of" not in r:
            assert key not in firsts, f"record {i} repeats record {firsts.get(key)}"
            firsts[key] = i
