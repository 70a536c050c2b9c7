"""GhostNet's cheap operation (issue 48): a conv concatenated with its own depthwise copy.

``GhostModule``: ``x1 = primary(x)`` (C/2 channels), ``x2 = cheap(x1)`` (a depthwise conv, channel i
of x2 made from channel i of x1), ``out = cat([x1, x2])``. Removing channel i of the primary conv
must remove concat channels i and C/2 + i from every reader of the concat, through depthwise convs,
squeeze-excitation gates and residual adds (``x += shortcut`` on the whole-concat view). These
tests build the pattern by hand (no timm): the groups are found, every member's map sends both
copies to the same group channel, and the pruned model computes exactly what the dense one computes
on the kept channels (and what ONNX Runtime computes). What cannot be mapped stays refused.

ReXNet's shortcut, added into ``x[:, :C]`` of a wider ``x`` with C a constant of the model code, is
refused: the last test shows that pruning it, by Torch-Pruning or even by removing the channel
everywhere it lives, yields a model that fails at forward, because the constant does not shrink.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune_edge.graph import DEPTHWISE, IN, OUT, MemberPlan, _relabel_copies, prunable_groups
from rlprune_edge.graph_rules import CROSS_COUPLED_REASON, SLICE_REASON, copies_problem, copy_classes
from rlprune_edge.importance import channel_scores
from rlprune_edge.pruning import _copy_and_shrink, prune, select_channels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import ort_relative_error, randomize_bn  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


class GhostModule(nn.Module):
    """timm's GhostModule (ratio 2): ``cat([x1, cheap(x1)])[:, :cout]``, the slice whole for even `cout`."""

    def __init__(self, cin: int, cout: int, act: bool = True) -> None:
        super().__init__()
        init = math.ceil(cout / 2)
        self.cout = cout
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init),
                                     nn.ReLU(inplace=True) if act else nn.Identity())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False),
                                   nn.BatchNorm2d(init), nn.ReLU(inplace=True) if act else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], 1)[:, :self.cout]


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(c, c // 4, 1)
        self.conv_expand = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv_expand(torch.relu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class GhostBottleneck(nn.Module):
    """timm's GhostBottleneck: ghost1 → [depthwise conv, stride 2] → [SE] → ghost2, ``x += shortcut``."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid)
        self.conv_dw = (nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
                        if stride > 1 else None)
        self.se = SqueezeExcite(mid) if se else None
        self.ghost2 = GhostModule(mid, cout, act=False)
        self.shortcut = nn.Sequential() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.ghost1(x)
        if self.conv_dw is not None:
            x = self.conv_dw(x)
        if self.se is not None:
            x = self.se(x)
        x = self.ghost2(x)
        x += self.shortcut(shortcut)
        return x


class TinyGhostNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(GhostBottleneck(16, 16, 16), GhostBottleneck(16, 48, 24, stride=2, se=True),
                                    GhostBottleneck(24, 72, 24, se=True))
        self.conv_head = nn.Conv2d(24, 64, 1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(torch.relu(self.conv_head(x.mean((2, 3), keepdim=True))).flatten(1))


class PrimaryFirst(nn.Module):
    """The primary conv is traced before the concat's readers, so the group is rooted at it and the
    depthwise reader holds two channels of every group channel (the other root order of TinyGhostNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Conv2d(3, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return self.head(torch.cat([self.dw(torch.cat([x1, self.cheap(x1)], 1)), x1], 1))


class ConcatThenDepthwise(nn.Module):
    """The smallest case (was refused, tests/test_graph.py's ``_Ghost``): rooted at the depthwise conv
    after the concat, channel j of the primary conv follows group channels j and j + 4."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Conv2d(3, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(8, 8, 3, groups=8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return self.head(self.dw(torch.cat([x1, self.cheap(x1)], dim=1)))


class InplaceView(nn.Module):
    """``v += b(x)`` on a view of ``a(x)``: the whole tensor (GhostNet's case) or a transpose of the same shape."""

    def __init__(self, transpose: bool) -> None:
        super().__init__()
        self.transpose = transpose
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.a(x)
        v = z.transpose(1, 2) if self.transpose else z[:, :4]
        v += self.b(x)
        return self.head(v)


def _dense(model: nn.Module, size: int = 32) -> tuple[nn.Module, list, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_bn(model.eval(), 1)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    return model, prunable_groups(model, x), x


def _by_name(groups: list) -> dict:
    return {g.name: g for g in groups}


def _plan(group, module: str):
    return next(p for p in group.plan if p.module == module)


def zeroed(model: nn.Module, groups: list, removed: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` whose `removed` group channels produce exact zeros (filters, biases, norm affine):
    the dense model restricted to the kept channels, at full width."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for g in groups:
            if g.name not in removed:
                continue
            for p in g.plan:
                if p.kind == IN:
                    continue
                m = model.get_submodule(p.module)
                idxs = p.idxs[torch.isin(p.root_idxs, removed[g.name])]
                m.weight[idxs] = 0
                if m.bias is not None:
                    m.bias[idxs] = 0
    return model


def random_prune(model: nn.Module, groups: list, x: torch.Tensor, seed: int) -> tuple[nn.Module, nn.Module]:
    """(pruned model, dense model with the same channels zeroed): every prunable group at a random keep count."""
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: g.blocks * int(torch.randint(1, max(2, g.channels // g.blocks), (1,), generator=gen))
            for g in groups if g.prunable}
    scores = channel_scores(model, x, [g for g in groups if g.prunable], method="l1")
    pruned = prune(model, x, keep=keep, groups=groups, scores=scores)
    return pruned, zeroed(model, groups, select_channels(groups, keep, scores))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_copy_classes_join_group_channels_that_share_a_member_channel() -> None:
    # rooted at a concat reader of 6 channels: member channel i follows group channels i and i + 3
    classes, n = copy_classes([[(0, 0), (1, 1), (2, 2), (0, 3), (1, 4), (2, 5)], [(5, 5)]], 6)
    assert (classes, n) == ([0, 1, 2, 0, 1, 2], 3)
    # chains through several members; classes numbered by their lowest channel
    assert copy_classes([[(0, 3), (0, 1)], [(7, 1), (7, 2)]], 5) == ([0, 1, 1, 1, 2], 3)
    assert copy_classes([[(i, i) for i in range(4)]], 4) == ([0, 1, 2, 3], 4)


def test_copies_problem_refuses_members_that_hold_group_channels_unevenly() -> None:
    even = [("primary", torch.tensor([0, 1, 2])), ("dw", torch.tensor([0, 1, 2, 0, 1, 2]))]
    assert copies_problem(even, 3) is None
    uneven = [*even, ("part", torch.tensor([0, 1, 2, 0]))]  # reads copy 2 of channel 0 only
    assert copies_problem(uneven, 3) == CROSS_COUPLED_REASON.format("part")


def test_a_group_of_copies_without_a_layer_owning_each_channel_once_is_not_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=8))
    plan = [MemberPlan("0", OUT, torch.arange(8), torch.arange(8) % 4),
            MemberPlan("1", DEPTHWISE, torch.arange(8), torch.arange(8) % 4)]
    assert not _relabel_copies(plan, model, 4)
    # a layer that owns each channel once, in another order, numbers the group's channels
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 1))
    plan = [MemberPlan("0", OUT, torch.arange(4), torch.tensor([2, 0, 3, 1])),
            MemberPlan("1", IN, torch.arange(8), torch.tensor([2, 0, 3, 1, 2, 0, 3, 1]))]
    assert _relabel_copies(plan, model, 4)
    assert plan[0].root_idxs.tolist() == [0, 1, 2, 3] and plan[1].root_idxs.tolist() == [0, 1, 2, 3] * 2


def test_tiny_ghostnet_offers_every_group_torch_pruning_offers() -> None:
    import torch_pruning as tp

    model, groups, x = _dense(TinyGhostNet())
    refused = [(g.name, g.reason) for g in groups if not g.prunable and not g.follows]
    assert refused == [("classifier", "produces the model output")]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    theirs = sum(g[0].dep.target.module is not model.classifier
                 for g in dg.get_all_groups(root_module_types=[nn.Conv2d, nn.Linear]))
    assert sum(g.prunable for g in groups) == theirs == 8

    by = _by_name(groups)
    # ghost1 of block 1: 24 primary channels; its depthwise conv_dw, SE and ghost2 read both copies
    g = by["blocks.1.ghost1.primary.0"]
    assert g.prunable and g.channels == 24
    for name in ("blocks.1.conv_dw.0", "blocks.1.conv_dw.1", "blocks.1.se.conv_expand", "blocks.1.ghost2.primary.0"):
        p = _plan(g, name)
        assert sorted(p.idxs.tolist()) == list(range(48)) and torch.equal(p.root_idxs, p.idxs % 24), name
    assert _plan(g, "blocks.1.conv_dw.0").kind == DEPTHWISE and _plan(g, "blocks.1.se.conv_expand").kind == OUT
    assert _plan(g, "blocks.1.se.conv_reduce").kind == IN
    assert by["blocks.1.conv_dw.0"].follows == ["blocks.1.ghost1.primary.0"]
    # the residual stream of block 0 (16 = 8 + 8 channels): the stem's channels i and i + 8 go together
    s = by["blocks.0.ghost2.primary.0"]
    assert s.prunable and s.channels == 8
    stem = _plan(s, "stem.0")
    assert stem.kind == OUT and torch.equal(stem.root_idxs, stem.idxs % 8) and len(stem.idxs) == 16
    assert by["stem.0"].follows == ["blocks.0.ghost2.primary.0"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_tiny_ghostnet_is_exact_and_matches_onnx_runtime(seed: int, tmp_path) -> None:
    model, groups, x = _dense(TinyGhostNet())
    pruned, reference = random_prune(model, groups, x, seed)
    assert pruned.blocks[1].ghost1.primary[0].out_channels < 24
    with torch.no_grad():
        y, want = pruned(x), reference(x)
    assert _rel(y, want) <= 1e-5
    assert ort_relative_error(pruned, x, tmp_path / "ghost.onnx") <= 1e-4


def test_pruned_ghost_module_is_the_dense_one_on_the_kept_channels() -> None:
    """Pruning only block 1's ghost1 (keep 10 of 24): its output is the dense output at the kept
    channels i and 24 + i, and conv_dw keeps exactly those filters."""
    model, groups, x = _dense(TinyGhostNet())
    name = "blocks.1.ghost1.primary.0"
    scores = channel_scores(model, x, [_by_name(groups)[name]], method="l1")
    pruned = prune(model, x, keep={name: 10}, groups=groups, scores=scores)
    kept = torch.sort(torch.topk(scores[name], 10).indices).values
    both = torch.cat([kept, kept + 24])
    assert pruned.blocks[1].conv_dw[0].weight.shape == (20, 1, 3, 3)
    assert torch.equal(pruned.blocks[1].conv_dw[0].weight, model.blocks[1].conv_dw[0].weight[both])
    assert torch.equal(pruned.blocks[1].se.conv_expand.weight, model.blocks[1].se.conv_expand.weight[both])
    assert torch.equal(pruned.blocks[1].ghost2.primary[0].weight, model.blocks[1].ghost2.primary[0].weight[:, both])
    with torch.no_grad():
        h = model.blocks[0](model.stem(x))
        assert torch.equal(pruned.blocks[0](pruned.stem(x)), h)
        assert _rel(pruned.blocks[1].ghost1(h), model.blocks[1].ghost1(h)[:, both]) <= 1e-6
        dw_p = pruned.blocks[1].conv_dw(pruned.blocks[1].ghost1(h))
        assert _rel(dw_p, model.blocks[1].conv_dw(model.blocks[1].ghost1(h))[:, both]) <= 1e-6


def test_group_rooted_at_the_primary_conv_maps_both_copies(tmp_path) -> None:
    model, groups, x = _dense(PrimaryFirst(), size=8)
    g = _by_name(groups)["primary"]
    assert g.prunable and g.channels == 4
    assert torch.equal(_plan(g, "dw").root_idxs, torch.arange(8) % 4)
    assert torch.equal(_plan(g, "head").root_idxs, torch.arange(12) % 4)
    for seed in range(3):
        pruned, reference = random_prune(model, groups, x, seed)
        with torch.no_grad():
            assert _rel(pruned(x), reference(x)) <= 1e-5
    assert pruned.dw.out_channels == 2 * pruned.primary.out_channels
    assert ort_relative_error(pruned, x, tmp_path / "primary.onnx") <= 1e-4


def test_concat_with_own_depthwise_copy_then_depthwise_prunes_both_copies() -> None:
    model, groups, x = _dense(ConcatThenDepthwise(), size=8)
    by = _by_name(groups)
    assert by["primary"].prunable and by["primary"].channels == 4
    assert by["cheap"].follows == by["dw"].follows == ["primary"]
    assert torch.equal(_plan(by["primary"], "dw").root_idxs, torch.arange(8) % 4)
    for keep in (1, 3):
        scores = channel_scores(model, x, [by["primary"]], method="l1")
        pruned = prune(model, x, keep={"primary": keep}, groups=groups, scores=scores)
        reference = zeroed(model, groups, select_channels(groups, {"primary": keep}, scores))
        assert pruned.dw.weight.shape == (2 * keep, 1, 3, 3) and pruned.head.in_channels == 2 * keep
        with torch.no_grad():
            assert _rel(pruned(x), reference(x)) <= 1e-5


def test_inplace_add_on_a_whole_view_is_mapped_and_on_a_transposed_view_refused() -> None:
    model, groups, x = _dense(InplaceView(transpose=False), size=4)
    g = _by_name(groups)["a"]
    assert g.prunable and ("b", OUT) in g.members
    pruned, reference = random_prune(model, groups, x, 0)
    with torch.no_grad():
        assert _rel(pruned(x), reference(x)) <= 1e-5
    _, groups, _ = _dense(InplaceView(transpose=True), size=4)  # C == H: the view has the base's shape
    by = _by_name(groups)
    assert not by["a"].prunable and "may mix or reorder channels" in by["a"].reason, by["a"].reason
    assert not by["b"].prunable and by["b"].follows == ["a"]


def test_ghost_module_with_an_odd_width_is_refused_by_its_slice() -> None:
    """cout 7: ``cat([x1, x2])`` has 8 channels and ``[:, :7]`` cuts at a constant of the model code."""
    model = nn.Sequential(GhostModule(3, 7), nn.Conv2d(7, 2, 1))
    _, groups, _ = _dense(model, size=8)
    g = _by_name(groups)["0.primary.0"]
    assert not g.prunable and g.reason == SLICE_REASON


class RexBlock(nn.Module):
    """ReXNet's LinearBottleneck: the shortcut is added into ``x[:, 0:in_channels]`` of a wider ``x``."""

    def __init__(self, cin: int = 8, cout: int = 12) -> None:
        super().__init__()
        self.in_channels = cin
        self.conv_exp = nn.Conv2d(cin, 24, 1)
        self.conv_dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.conv_pwl = nn.Conv2d(24, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pwl(self.conv_dw(self.conv_exp(x)))
        return torch.cat([x[:, 0:self.in_channels] + shortcut, x[:, self.in_channels:]], dim=1)


def test_rexnet_shortcut_into_a_channel_slice_is_refused_because_pruning_it_breaks_the_model() -> None:
    import torch_pruning as tp

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), RexBlock(), nn.Conv2d(12, 2, 1)).eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    groups = _by_name(prunable_groups(model, x))
    assert groups["0"].reason == SLICE_REASON and groups["1.conv_pwl"].reason == SLICE_REASON
    assert groups["1.conv_exp"].prunable  # the expansion inside the block is not affected
    # forced through Torch-Pruning, which maps the slices: the pruned model fails at forward
    for root in ("0", "1.conv_pwl"):
        forced = copy.deepcopy(model)
        dg = tp.DependencyGraph().build_dependency(forced, example_inputs=x)
        dg.get_pruning_group(forced.get_submodule(root), tp.prune_conv_out_channels, [1]).prune()
        with torch.no_grad(), pytest.raises(RuntimeError, match="must match the size"):
            forced(x)
    # removing stream channel 1 everywhere it lives fails too: x[:, 0:8] still takes 8 channels
    one = torch.tensor([1])
    complete = _copy_and_shrink(model, {("0", OUT): one, ("1.conv_exp", IN): one, ("1.conv_pwl", OUT): one,
                                        ("2", IN): one})
    with torch.no_grad(), pytest.raises(RuntimeError, match="must match the size"):
        complete(x)
    # it is the right removal only once the model code's constant moves, which a pruner cannot do
    complete[1].in_channels = 7
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for conv in (reference[0], reference[1].conv_pwl):
            conv.weight[1] = 0
            conv.bias[1] = 0
        assert _rel(complete(x), reference(x)) <= 1e-5
