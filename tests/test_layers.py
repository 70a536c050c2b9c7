"""The layer-handler registry (rlprune_edge.layers): lookup, channel counts, shrinking, shape records."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.layers import DEPTHWISE, IN, OUT, handler_for


class MyLinear(nn.Linear):
    pass


SAMPLES = [
    nn.Conv1d(4, 6, 3), nn.Conv2d(4, 6, 3, groups=2, bias=False), nn.Conv3d(4, 6, 1),
    nn.ConvTranspose2d(4, 6, 2, stride=2, output_padding=1), nn.Linear(4, 6), MyLinear(4, 6, bias=False),
    nn.BatchNorm1d(6), nn.BatchNorm2d(6, affine=False), nn.BatchNorm3d(6, track_running_stats=False),
    nn.GroupNorm(3, 6), nn.LayerNorm((5, 6)), nn.PReLU(6), nn.PReLU(),
]


def test_most_specific_handler_wins():
    conv, transposed = handler_for(nn.Conv2d(2, 2, 1)), handler_for(nn.ConvTranspose2d(2, 2, 1))
    assert conv is not transposed and conv.prunable and not transposed.prunable and transposed.root
    assert handler_for(MyLinear(2, 3)) is handler_for(nn.Linear(2, 3))
    assert handler_for(nn.ReLU()) is None and handler_for(nn.Sequential()) is None and handler_for(None) is None
    assert [type(m).__name__ for m in SAMPLES if handler_for(m) and handler_for(m).root] == [
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Linear", "MyLinear"]


@pytest.mark.parametrize("module", SAMPLES, ids=lambda m: type(m).__name__)
def test_shape_args_rebuild_round_trip(module):
    h = handler_for(module)
    args = h.shape_args(module)
    again = h.rebuild(module, args)
    assert type(again) is type(module) and h.shape_args(again) == args
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == {
        k: tuple(v.shape) for k, v in module.state_dict().items()}


def _shrunk_matches_rebuild(module: nn.Module, kind: str, keep: list[int]) -> nn.Module:
    h = handler_for(module)
    h.shrink(module, kind, torch.tensor(keep))
    fresh = h.rebuild(module, h.shape_args(module))
    fresh.load_state_dict(module.state_dict(), strict=True)  # shrunk tensors fit a module built at that shape
    return module


def test_shrink_slices_every_per_channel_tensor():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
    _shrunk_matches_rebuild(conv, OUT, [1, 4])
    assert torch.equal(conv.weight, w[[1, 4]]) and torch.equal(conv.bias, b[[1, 4]]) and conv.out_channels == 2
    _shrunk_matches_rebuild(conv, IN, [0, 3])
    assert torch.equal(conv.weight, w[[1, 4]][:, [0, 3]]) and conv.in_channels == 2
    dw = _shrunk_matches_rebuild(nn.Conv2d(6, 6, 3, groups=6), DEPTHWISE, [0, 2, 5])
    assert dw.in_channels == dw.out_channels == dw.groups == 3
    grouped = nn.Conv2d(4, 6, 1, groups=2)
    w = grouped.weight.detach().clone()
    _shrunk_matches_rebuild(grouped, IN, [1, 2])  # one input channel from each conv group
    assert torch.equal(grouped.weight, torch.cat([w[:3, [1]], w[3:, [0]]])) and grouped.groups == 2
    with pytest.raises(UserError, match="per conv group"):
        handler_for(grouped).shrink(grouped, OUT, torch.tensor([0, 1]))
    lin = _shrunk_matches_rebuild(nn.Linear(4, 6), IN, [0, 1, 3])
    assert lin.in_features == 3 and _shrunk_matches_rebuild(lin, OUT, [5]).out_features == 1
    bn = nn.BatchNorm2d(6)
    bn.running_mean = torch.arange(6.0)
    assert torch.equal(_shrunk_matches_rebuild(bn, OUT, [2, 3]).running_mean, torch.tensor([2.0, 3.0]))
    assert _shrunk_matches_rebuild(nn.PReLU(6), OUT, [0, 1]).num_parameters == 2
    shared = nn.PReLU()
    assert handler_for(shared).out_channels(shared) is None


@pytest.mark.parametrize("module", [nn.ConvTranspose2d(4, 6, 2), nn.GroupNorm(3, 6), nn.LayerNorm(6)],
                         ids=lambda m: type(m).__name__)
def test_recorded_but_not_pruned(module):
    h = handler_for(module)
    assert not h.prunable and h.out_channels(module) == 6
    assert h.problem("x", module) == f"module x ({type(module).__name__}) is not supported by the pruner"
    with pytest.raises(UserError, match="cannot shrink"):
        h.shrink(module, OUT, torch.tensor([0]))
