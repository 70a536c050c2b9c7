"""Depth pruning: removable residual blocks, their influence, checkpoints and latency prediction
without them, and the depth plans of the search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlprune_edge.blocks import block_influence, block_of_slot, drop_blocks, removed_blocks, skippable_blocks
from rlprune_edge.models import build_model
from rlprune_edge.search.depth import depth_plans, plan_key


def _silence(block: nn.Module) -> None:
    """Make a block's residual branch output exactly zero (its last BatchNorm's affine pair at 0)."""
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    nn.init.zeros_(bns[-1].weight)
    nn.init.zeros_(bns[-1].bias)


def test_removable_blocks_are_the_identity_shortcut_ones():
    resnet = build_model("resnet20", 1.0)
    assert skippable_blocks(resnet) == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                        "layer3.1", "layer3.2"]  # layer2.0 / layer3.0 project and stride
    mnv3 = build_model("mobilenetv3_large", 0.5)
    names = skippable_blocks(mnv3)
    assert names and all(mnv3.get_submodule(n).use_residual for n in names)
    assert "features.2" not in names  # stride 2, 8 -> 16 channels: no identity shortcut
    assert skippable_blocks(build_model("vgg11", 0.25), plain=False) == []  # plain units: test_plain_units.py


@pytest.mark.parametrize("name,width", [("resnet20", 0.5), ("mobilenetv3_large", 0.5)])
def test_removing_a_silent_block_changes_nothing(name, width):
    torch.manual_seed(0)
    model = build_model(name, width).eval()
    block = skippable_blocks(model)[1]
    _silence(model.get_submodule(block))
    x = torch.randn(4, 3, 32, 32)
    dropped = drop_blocks(model, [block], copy_model=True)
    assert isinstance(dropped.get_submodule(block), nn.Identity)
    assert not isinstance(model.get_submodule(block), nn.Identity)  # copy_model left the original alone
    assert torch.allclose(model(x), dropped(x), atol=1e-5)
    assert removed_blocks(dropped, model) == [block]
    with pytest.raises(ValueError, match="not a removable block"):
        drop_blocks(model, ["layer2.0" if name == "resnet20" else "features.2"])


def test_block_influence_ranks_a_silent_block_lowest():
    torch.manual_seed(0)
    model = build_model("resnet20", 0.5).eval()
    _silence(model.get_submodule("layer2.1"))
    x = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    bi = block_influence(model, x)
    assert set(bi) == set(skippable_blocks(model))
    assert bi["layer2.1"] == pytest.approx(0.0, abs=1e-6)
    assert min(v for k, v in bi.items() if k != "layer2.1") > 1e-3


def test_checkpoint_round_trip_keeps_removed_blocks(tmp_path):
    from rlprune_edge.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.pruning import prune

    torch.manual_seed(0)
    model = build_model("resnet20", 0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    groups = [g for g in prunable_groups(model, x[:1]) if g.prunable]
    keep = {g.name: max(1, g.channels // 2) for g in groups}
    small = drop_blocks(prune(model, x[:1], keep=keep, importance="l1", groups=groups), ["layer1.1", "layer3.2"])
    info = ModelInfo("resnet20", 0.5, 10, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, [str(i) for i in range(10)])
    path = save_checkpoint(tmp_path / "m.pt", small, info)
    loaded, got = load_checkpoint(path)
    assert got.removed_blocks == ["layer1.1", "layer3.2"]
    assert torch.allclose(loaded(x), small.eval()(x), atol=1e-6)

    from rlprune_edge.errors import UserError

    payload = torch.load(path, weights_only=True)
    payload["info"]["removed_blocks"] = ["layer2.0"]  # not a removable block: refused, not a traceback
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="cannot be rebuilt.*layer2.0"):
        load_checkpoint(tmp_path / "bad.pt")
    payload["info"]["removed_blocks"] = "layer1.1"
    torch.save(payload, tmp_path / "bad2.pt")
    with pytest.raises(UserError, match="removed_blocks must be a list"):
        load_checkpoint(tmp_path / "bad2.pt")


def test_block_of_slot_reads_onnx_scopes_and_module_paths():
    blocks = ["features.1", "layer1.2"]
    assert block_of_slot("/features/features.1/block/block.0/Conv", blocks) == "features.1"
    assert block_of_slot("/features/features.10/block/block.0/Conv", blocks) is None
    assert block_of_slot("/features/features.1/Add", blocks) == "features.1"
    assert block_of_slot("layer1.2.conv1", blocks) == "layer1.2"
    assert block_of_slot("layer1.20.conv1", blocks) is None


def test_latency_model_predicts_a_model_without_its_removed_blocks(tmp_path, monkeypatch):
    """On a fake runtime whose per-node time is exactly linear in work, the prediction with blocks
    removed equals what the runtime reports for the pruned-and-depth-reduced model."""
    from helpers import fake_latency_model

    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.pruning import prune

    torch.manual_seed(0)
    model = build_model("resnet20", 0.5).eval()
    x = torch.randn(1, *model.input_shape)
    lm, backend, groups = fake_latency_model(tmp_path, monkeypatch, model, x)
    keep = {g.name: max(8, g.channels // 2 // 8 * 8) for g in groups if g.prunable}
    removed = ("layer1.1", "layer2.2", "layer3.1")
    small = drop_blocks(prune(model, x, keep=keep, importance="l1", groups=groups), removed)
    path = export_onnx(small, tmp_path / "small.onnx", input_shape=tuple(model.input_shape))
    truth = sum(backend._time(path).values())
    dense = sum(backend._time(export_onnx(model, tmp_path / "dense.onnx", input_shape=tuple(model.input_shape))).values())
    assert lm.predict(keep, removed) / lm.predict({}) == pytest.approx(truth / dense, rel=0.02)
    assert lm.predict(keep, removed) < lm.predict(keep)


def test_depth_plans_remove_least_influential_first_and_stop_when_full_width_fits():
    blocks = ["b0", "b1", "b2", "b3", "b4"]
    influence = {"b0": 0.5, "b1": 0.1, "b2": 0.3, "b3": 0.1, "b4": 0.9}
    per_block = {"b0": 2.0, "b1": 1.0, "b2": 1.0, "b3": 1.0, "b4": 1.0}

    def full_ms(removed):
        return 10.0 - sum(per_block[b] for b in removed)

    plans = depth_plans(blocks, influence, full_ms, goal_ms=7.5, limit=4)
    # ties (b1, b3) go later block first; stops at the first set whose full width fits 7.5 ms
    assert plans == [("b3",), ("b1", "b3"), ("b1", "b2", "b3")]
    assert depth_plans(blocks, influence, full_ms, goal_ms=1.0, limit=2) == [("b3",), ("b1", "b3")]
    assert depth_plans(blocks, influence, full_ms, goal_ms=None, limit=2) == [("b3",), ("b1", "b3")]
    assert depth_plans([], influence, full_ms, 5.0, 4) == [] and depth_plans(blocks, influence, full_ms, 5.0, 0) == []
    assert plan_key([1, 2], ["b", "a"]) == plan_key([1, 2], ["a", "b"]) != plan_key([1, 2], None)


def test_removal_scale_is_the_measured_share_of_the_predicted_saving():
    from rlprune_edge.search.depth import removal_scale

    assert removal_scale(1.0, 0.6, 0.8) == pytest.approx(0.5)  # half of the predicted 0.4 ms saving
    assert removal_scale(1.0, 0.6, 0.6) == pytest.approx(1.0)
    assert removal_scale(1.0, 0.6, 1.2) == 0.0 and removal_scale(1.0, 0.9, 0.1) == 2.0  # clamped
    assert removal_scale(1.0, 1.0, 0.5) == 1.0  # no predicted saving: nothing to scale
