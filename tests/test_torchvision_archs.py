"""Architectures the pruner was not written against: channel shuffle, grouped convs, SE, fire modules.

Every torchvision model here is built with ``weights=None`` (nothing is downloaded), random keep
counts are pruned with L1 importance, and the result must be exact: ONNX Runtime agrees with torch,
and the pruned model computes what the dense model computes with the removed channels zeroed.
"""

from __future__ import annotations

import copy
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

import rlprune_edge as rpe
from rlprune_edge.errors import UserError
from rlprune_edge.graph import IN
from rlprune_edge.graph_rules import SHUFFLE_REASON
from rlprune_edge.importance import channel_scores
from rlprune_edge.pruning import align_keep, select_channels

# name -> input side; ResNeXt-50 (23 M parameters) runs at 32x32 to stay fast
ARCHS = {
    "shufflenet_v2_x0_5": 64,
    "regnet_x_400mf": 64,
    "resnext50_32x4d": 32,
    "efficientnet_b0": 64,
    "squeezenet1_1": 64,
    "mobilenet_v2": 64,
}


sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import ort_relative_error as _ort_relative_error  # noqa: E402
from helpers import param_count as _params  # noqa: E402
from helpers import randomize_bn  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@cache
def _dense(name: str) -> tuple[nn.Module, list, torch.Tensor]:
    """The model (eval, random init, non-trivial BatchNorm statistics), its groups, a 1x3xSxS input."""
    import torchvision

    torch.manual_seed(0)
    model = randomize_bn(getattr(torchvision.models, name)(weights=None, num_classes=10).eval(), 1)
    size = ARCHS[name]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    return model, rpe.prunable_groups(model, x), x


def _by_name(groups: list) -> dict:
    return {g.name: g for g in groups}


def _zero_channels(model: nn.Module, groups: list, removed: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` whose `removed` group channels produce exact zeros (filters, biases, BN affine)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for g in groups:
            if g.name not in removed:
                continue
            for p in g.plan:
                if p.kind == IN:
                    continue
                m = model.get_submodule(p.module)
                for idx in p.idxs[torch.isin(p.root_idxs, removed[g.name])].tolist():
                    m.weight[idx] = 0
                    if m.bias is not None:
                        m.bias[idx] = 0
    return model


@pytest.mark.hostile(
    "unseen torchvision architectures (ShuffleNetV2, RegNetX, ResNeXt-50, EfficientNet-B0, SqueezeNet, "
    "MobileNetV2) pruned with random keep counts",
    "works: every group is prunable or carries its reason; the pruned model is smaller, matches the dense "
    "model with the removed channels zeroed, and ONNX Runtime agrees with torch within 1e-3 (measured <= 1e-6); "
    "the dense model is untouched",
)
@pytest.mark.parametrize("name", list(ARCHS))
def test_random_prune_is_exact_and_matches_onnx_runtime(name: str, tmp_path) -> None:
    model, groups, x = _dense(name)
    assert groups and any(g.prunable for g in groups), name
    for g in groups:
        assert g.prunable == (g.reason == ""), g.name
        if not g.prunable:
            assert isinstance(g.reason, str) and g.reason.strip(), g.name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y_before = model(x)

    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    keep = {g.name: int(torch.randint(1, g.channels + 1, (1,), generator=gen)) for g in groups if g.prunable}
    pruned = rpe.prune(model, x, keep=keep, importance="l1")

    # the dense model is untouched: same tensors, same outputs, still in eval mode
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(x), y_before)
    assert not model.training and pruned is not model
    assert _params(pruned) < _params(model)
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == y_before.shape == (1, 10) and torch.isfinite(y).all()

    assert _ort_relative_error(pruned, x, tmp_path / f"{name}.onnx") <= 1e-3

    # exactness: the same channels zeroed in the dense model give the same outputs
    aligned = align_keep(keep, groups)
    scores = channel_scores(model, x, groups, method="l1")
    removed = select_channels(groups, aligned, scores)
    zeroed = _zero_channels(model, groups, removed)
    again = rpe.prune(zeroed, x, keep=aligned, scores=scores, groups=groups)
    xs = torch.randn(2, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want, got = zeroed(xs), again(xs)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4, name
    assert [p.shape for p in again.parameters()] == [p.shape for p in pruned.parameters()]


@pytest.mark.hostile(
    "ShuffleNetV2: channel shuffle (view/transpose/view) and channel split (chunk)",
    "works: the trace no longer fails (was ZeroDivisionError inside Torch-Pruning); exactly the groups whose "
    "channels reach a shuffle are refused with the reason, every other group prunes",
)
def test_shufflenet_channel_shuffle_groups_are_refused_the_rest_prune() -> None:
    model, groups, x = _dense("shufflenet_v2_x0_5")
    by = _by_name(groups)
    shuffled = {g.name for g in groups if g.reason == SHUFFLE_REASON}
    # the last conv of every branch feeds concat -> shuffle; a stage's first depthwise conv reads a shuffled tensor
    expected = {n for n in by if n.endswith(("branch2.5", ".0.branch1.2"))} | {"stage3.0.branch1.0", "stage4.0.branch1.0"}
    assert shuffled == expected
    prunable = {g.name for g in groups if g.prunable}
    assert prunable == {"conv1.0", "conv5.0"} | {n for n in by if n.endswith("branch2.0")}
    for g in groups:  # everything else follows a prunable producer (depthwise) or is the classifier
        if g.name not in shuffled | prunable:
            assert g.follows or g.reason == "produces the model output", (g.name, g.reason)
    with pytest.raises(UserError, match="channel shuffle"):
        rpe.prune(model, x, keep={"stage2.1.branch2.5": 12}, importance="l1", groups=groups)


def _grouped_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {
        n: m for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)
    }


@pytest.mark.hostile(
    "grouped convolutions beyond depthwise (ResNeXt-50 32x4d, RegNetX-400MF)",
    "works: the groups around a grouped conv prune in equal shares per conv group (keep rounded to a "
    "multiple of the conv's groups), exactly; an unbalanced selection is refused",
)
@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_x_400mf"])
def test_grouped_convs_prune_in_equal_shares_per_conv_group(name: str) -> None:
    model, groups, x = _dense(name)
    convs = _grouped_convs(model)
    assert convs
    blocked = [g for g in groups if g.prunable and g.blocks > 1]
    for conv_name, conv in convs.items():  # both sides of every grouped conv belong to a prunable group
        for kind in ("in", "out"):
            owner = [g for g in blocked if (conv_name, kind) in g.members]
            assert len(owner) == 1 and owner[0].blocks == conv.groups, (conv_name, kind)

    g = blocked[0]
    for k in range(1, g.channels + 1):  # keep counts round to whole shares of every conv group
        aligned = align_keep({g.name: k}, groups)[g.name]
        assert aligned % g.blocks == 0 and abs(aligned - k) <= max(g.blocks / 2, g.blocks - k), (k, aligned)
    with pytest.raises(UserError, match=f"multiple of {g.blocks}"):
        select_channels(groups, {g.name: g.channels - 1}, {g.name: torch.rand(g.channels)})

    # drop one channel per conv group in the first few blocked groups: exact against zeroed channels
    gen = torch.Generator().manual_seed(7)
    removed = {}
    for g in blocked[:6]:
        removed[g.name] = torch.stack(
            [(g.block_ids == c).nonzero().squeeze(1)[torch.randint(0, g.channels // g.blocks, (1,), generator=gen)][0]
             for c in range(g.blocks)]
        ).sort().values
    scores = {n: torch.ones(_by_name(groups)[n].channels).index_fill_(0, r, 0.0) for n, r in removed.items()}
    keep = {n: _by_name(groups)[n].channels - _by_name(groups)[n].blocks for n in removed}
    zeroed = _zero_channels(model, groups, removed)
    pruned = rpe.prune(zeroed, x, keep=keep, scores=scores, groups=groups)
    with torch.no_grad():
        want, got = zeroed(x), pruned(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    for conv_name, conv in _grouped_convs(pruned).items():
        dense = convs[conv_name]
        assert conv.groups == dense.groups  # conv groups are kept, each one narrower
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
        assert conv.weight.shape == (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)
    assert _params(pruned) < _params(model)


class SplitSlice(nn.Module):
    """A channel chunk and a channel slice: their sizes are constants of the code, the cut cannot move."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 1)
        self.a = nn.Conv2d(4, 6, 1)
        self.b = nn.Conv2d(4, 6, 1)
        self.d = nn.Conv2d(3, 6, 1)
        self.e = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(6 + 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, q = torch.relu(self.c(x)).chunk(2, dim=1)
        h = torch.relu(self.a(p)) + torch.relu(self.b(q))
        e = torch.relu(self.e(torch.relu(self.d(x))[:, :4]))
        return self.fc(torch.cat([h.mean((2, 3)), e.mean((2, 3))], 1))


def test_channel_split_and_slice_refuse_only_their_groups() -> None:
    model = SplitSlice().eval()
    x = torch.randn(2, 3, 8, 8)
    by = _by_name(rpe.prunable_groups(model, x[:1]))
    assert "channel split (chunk/split)" in by["c"].reason and "channel slice" in by["d"].reason
    assert by["a"].prunable and by["b"].follows == ["a"] and by["e"].prunable
    pruned = rpe.prune(model, x[:1], keep={"a": 3, "e": 2}, importance="l1")
    with torch.no_grad():
        assert pruned(x).shape == (2, 2) and pruned.fc.in_features == 3 + 2
    with pytest.raises(UserError, match="channel split"):
        rpe.prune(model, x[:1], keep={"c": 4}, importance="l1")
