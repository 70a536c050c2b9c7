"""benchmarks/studies/study_vgg_layers.py: which VGG conv units can be removed, and the plans built from them (no timing here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune_edge.models.vgg import build_vgg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_study  # noqa: E402


def _tool():
    return load_study("study_vgg_layers")


def test_removable_units_are_the_same_width_convs_after_a_relu():
    tool = _tool()
    vgg = build_vgg("vgg16", 0.125, 10)  # [64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M] / 8
    units = tool.removable_units(vgg.features)
    convs = [i for i, m in enumerate(vgg.features) if isinstance(m, nn.Conv2d)]
    # a conv that changes the width (or sees the image) is never removable
    assert units == [convs[i] for i in (1, 3, 5, 6, 8, 9, 10, 11, 12)]  # stage 5 opens 512 -> 512
    cut = tool.drop_units(vgg, units[:2])
    assert isinstance(cut.features[units[0]], nn.Identity) and isinstance(cut.features[units[0] + 2], nn.Identity)
    assert isinstance(vgg.features[units[0]], nn.Conv2d)  # the original is untouched
    assert tool.removable_units(cut.features) == units[2:]  # a removed unit is gone, the others stay removable
    with pytest.raises(SystemExit, match="not a removable conv unit"):
        tool.drop_units(vgg, [convs[0]])


def test_a_plan_removes_units_then_prunes_uniformly_and_still_runs():
    tool = _tool()
    vgg = build_vgg("vgg16", 0.25, 10).eval()
    x = torch.zeros(1, 3, 32, 32)
    units = tool.removable_units(vgg.features)[-3:]
    model, keep = tool.build_plan(vgg, x, units, 0.5, 8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13 - 3
    assert all(k % 8 == 0 for k in keep[:-1])
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in vgg.parameters())
    assert tool.parse_plan("@0.4") == ([], 0.4) and tool.parse_plan("30,33@0.7") == ([30, 33], 0.7)
    with pytest.raises(SystemExit, match="INDICES@SCALE"):
        tool.parse_plan("30,33")
