"""Coupled channel groups: names, coupling on the zoo, output layer, unsupported patterns."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from torch import nn

import rlprune_edge
from rlprune_edge.errors import UserError
from rlprune_edge.graph import DEPTHWISE, IN, OUT, format_groups_table, prunable_groups
from rlprune_edge.models import ZOO_NAMES, build_model
from rlprune_edge.pruning import prune

pytestmark = pytest.mark.usefixtures("single_thread")


@cache
def _zoo(name: str) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = build_model(name, width=0.25).eval()
    return model, prunable_groups(model, torch.zeros(1, 3, 32, 32))


def _by_name(groups: list) -> dict:
    return {g.name: g for g in groups}


class ConvHead(nn.Module):
    """SqueezeNet-style: the last conv produces the class scores, then pool + flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.head(self.body(x))), 1), 1)


class FlattenNet(nn.Module):
    """Conv features of 2x2 spatial flattened straight into a Linear (4 inputs per channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


class SpatialAttention(nn.Module):
    """A 1-channel map broadcast over 6 channels, and a concat of flattened tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.single = nn.Conv2d(6, 1, 1)
        self.other = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 + 4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = h * torch.sigmoid(self.single(h))
        o = torch.relu(self.other(x))
        return self.fc(torch.cat([h.mean((2, 3)), torch.flatten(o, 1)], 1))


class ShuffleNet(nn.Module):
    """Channel shuffle (view-transpose-view), refused, and a grouped conv, pruned per conv group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.b = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)
        h = torch.relu(self.b(torch.relu(self.grouped(h))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_groups_cover_every_layer_once(name: str) -> None:
    model, groups = _zoo(name)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = [g.name for g in groups]
    assert sorted(names) == sorted(layers)  # one row per conv/linear: own group or follower
    # a group counts its followers (residual partners, depthwise convs); follower rows show their own share
    assert sum(g.flops_share for g in groups if not g.follows) == pytest.approx(1.0, abs=1e-6)
    assert any(g.prunable for g in groups)
    out_layer = [g for g in groups if g.reason == "produces the model output"]
    assert [g.name for g in out_layer] == [layers[-1]]  # the classifier, never prunable
    for g in groups:
        assert g.prunable == (g.reason == "")
        if g.follows:
            assert not g.prunable and all(f in names for f in g.follows) and not g.members
        if g.prunable:
            assert (g.name, OUT) in g.members and g.channels >= 2
            assert 0 < g.coupled_flops_share <= 1 and g.flops_share <= g.coupled_flops_share + 1e-12


def test_names_are_stable_across_calls_and_after_pruning() -> None:
    model, groups = _zoo("resnet56")
    again = prunable_groups(model, torch.zeros(1, 3, 32, 32))
    assert [(g.name, g.channels, g.prunable, g.reason, g.members) for g in again] == [
        (g.name, g.channels, g.prunable, g.reason, g.members) for g in groups
    ]
    keep = {g.name: max(1, g.channels // 3) for g in groups if g.prunable}
    pruned = prune(model, torch.zeros(1, 3, 32, 32), keep, importance="l1", groups=groups)
    after = prunable_groups(pruned, torch.zeros(1, 3, 32, 32))
    assert [g.name for g in after] == [g.name for g in groups]
    assert {g.name: g.channels for g in after if g.name in keep} == keep


def test_residual_add_couples_stem_and_block_outputs() -> None:
    _, groups = _zoo("resnet20")
    by = _by_name(groups)
    stem = by["conv1"]
    outs = {m for m, k in stem.members if k == OUT}
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.2.conv2", "layer1.2.bn2"} <= outs
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"} <= {m for m, k in stem.members if k == IN}
    assert by["layer1.1.conv2"].follows == ["conv1"] and "residual add" in by["layer1.1.conv2"].reason
    assert by["layer2.0.shortcut.0"].follows == ["layer2.0.conv2"]
    assert by["layer1.0.conv1"].prunable  # inside a block: free to prune


def test_depthwise_and_squeeze_excitation_follow_their_producer() -> None:
    model, groups = _zoo("mobilenetv3_small")
    by = _by_name(groups)
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise
    for n in depthwise:
        row = by[n]
        assert not row.prunable and row.reason.startswith("depthwise conv follows its producer group")
        (leader,) = row.follows
        assert (n, DEPTHWISE) in by[leader].members
    se_out = [g for g in groups if g.name.endswith("fc2")]
    assert se_out and all("squeeze-excitation" in g.reason for g in se_out)
    assert all(by[g.name[: -len("fc2")] + "fc1"].prunable for g in se_out)


def test_concat_slices_partition_the_consumers() -> None:
    """Every input channel of a layer after a concat belongs to exactly one group, as one slice."""
    for name in ("googlenet", "densenet121"):
        model, groups = _zoo(name)
        seen: dict[str, list[int]] = {}
        for g in groups:
            for p in g.plan:
                if p.kind == IN:
                    seen.setdefault(p.module, []).extend(p.idxs.tolist())
        multi = 0
        for module, idxs in seen.items():
            m = model.get_submodule(module)
            width = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
            assert sorted(idxs) == list(range(width)), (name, module)
            multi += sum(1 for g in groups if any(p.module == module and p.kind == IN for p in g.plan)) > 1
        assert multi > 0, name


def test_output_conv_is_never_pruned_and_flatten_maps_into_linear() -> None:
    groups = prunable_groups(ConvHead(), torch.zeros(1, 3, 8, 8))
    assert _by_name(groups)["head"].reason == "produces the model output"
    assert _by_name(groups)["body.0"].prunable

    model = FlattenNet().eval()
    groups = prunable_groups(model, torch.zeros(1, 3, 4, 4))
    conv = _by_name(groups)["conv"]
    fc = next(p for p in conv.plan if p.module == "fc")
    assert fc.kind == IN and len(fc.idxs) == 6 * 4
    assert fc.root_idxs.tolist() == [c for c in range(6) for _ in range(4)]  # 4 flattened inputs per channel
    assert _by_name(groups)["fc"].reason == "produces the model output"
    pruned = prune(model, torch.zeros(1, 3, 4, 4), {"conv": 2}, scores={"conv": torch.arange(6.0)}, groups=groups)
    assert pruned.fc.in_features == 2 * 4
    assert torch.equal(pruned.fc.weight, model.fc.weight[:, 16:])  # channels 4, 5 kept, 4 columns each


def test_unsupported_patterns_are_refused_with_a_reason() -> None:
    model = ShuffleNet().eval()
    groups = _by_name(prunable_groups(model, torch.zeros(1, 3, 8, 8)))
    assert not groups["a"].prunable and "channel shuffle (view/transpose)" in groups["a"].reason
    # a grouped conv prunes in equal shares per conv group (tests/test_torchvision_archs.py)
    assert groups["grouped"].prunable and groups["grouped"].blocks == 2
    assert groups["b"].prunable
    with pytest.raises(UserError, match="cannot be pruned"):
        prune(model, torch.zeros(1, 3, 8, 8), {"a": 4}, importance="l1")


class Broadcast(nn.Module):
    """A 1-channel gate broadcast over 6 channels (spatial attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.single = nn.Conv2d(6, 1, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc((h * torch.sigmoid(self.single(h))).mean((2, 3)))


def test_channel_broadcast_is_refused() -> None:
    groups = _by_name(prunable_groups(Broadcast(), torch.zeros(1, 3, 4, 4)))
    assert not groups["single"].prunable and "do not line up at conv" in groups["single"].reason
    assert groups["conv"].follows == ["single"] and groups["conv"].channels == 6


def test_broadcast_and_flattened_concat_are_refused() -> None:
    """Torch-Pruning folds these into one bogus group; every row of it must come out unprunable."""
    groups = _by_name(prunable_groups(SpatialAttention(), torch.zeros(1, 3, 4, 4)))
    assert set(groups) == {"conv", "single", "other", "fc"}
    assert not any(g.prunable for g in groups.values())
    assert "concat could not be mapped" in groups["other"].reason
    assert groups["conv"].follows == groups["single"].follows == ["other"]
    assert groups["fc"].reason == "produces the model output"


def test_ignored_layers_and_bad_inputs() -> None:
    model, _ = _zoo("vgg11")
    x = torch.zeros(1, 3, 32, 32)
    groups = _by_name(prunable_groups(model, x, ignored_layers=["features.0"]))
    assert not groups["features.0"].prunable and "ignored" in groups["features.0"].reason
    with pytest.raises(UserError, match="nope"):
        prunable_groups(model, x, ignored_layers=["nope"])
    with pytest.raises(UserError, match="input shape"):
        prunable_groups(model, torch.zeros(1, 5, 32, 32))
    with pytest.raises(UserError, match="example_inputs"):
        prunable_groups(model, [[1, 2]])


def test_model_is_left_as_it_was() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25).train()
    for p in model.parameters():
        p.requires_grad_(False)  # frozen models still trace
    state = {k: v.clone() for k, v in model.state_dict().items()}
    groups = rlprune_edge.prunable_groups(model, torch.randn(2, 3, 32, 32))
    assert any(g.prunable for g in groups)
    assert all(m.training for m in model.modules())
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_format_groups_table() -> None:
    _, groups = _zoo("resnet20")
    table = format_groups_table(groups)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "channels", "prunable", "FLOPs", "share"]
    assert len(lines) == len(groups) + 3
    assert "fc" in table and "no: produces the model output" in table
    row = next(line for line in lines if line.startswith("conv1 "))
    assert " yes " in row and row.rstrip().endswith("%")
    assert lines[-1].startswith(f"{sum(g.prunable for g in groups)} prunable group(s)")


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv3_small", "googlenet"])
def test_walk_matches_torch_pruning_get_pruning_group(name: str) -> None:
    """Our dependency walk (no per-call concat re-mapping) yields the library's groups exactly."""
    import torch_pruning as tp

    from rlprune_edge.graph import _as_input_tuple, _raw_groups

    model, _ = _zoo(name)
    dg = tp.DependencyGraph().build_dependency(copy.deepcopy(model), _as_input_tuple(torch.zeros(1, 3, 32, 32)), verbose=False)
    ours = _raw_groups(dg)
    assert len(ours) > 3
    for raw in ours:
        module = raw[0].node.module
        pruner = dg.get_pruner_of_module(module)
        ref = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module))))

        def key(node, handler, idxs, roots):
            return (id(node), id(handler.__self__), handler.__name__, tuple(idxs), tuple(roots))

        assert sorted(key(i.node, i.handler, i.idxs, i.root_idxs) for i in raw) == sorted(
            key(it.dep.target, it.dep.handler, it.idxs, it.root_idxs) for it in ref
        )


class _NormAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass that calls F.batch_norm and an activation itself (like timm's BatchNormAct2d)."""

    def __init__(self, n: int, act: nn.Module) -> None:
        super().__init__(n)
        self.drop, self.act = nn.Identity(), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     self.training, self.momentum, self.eps)
        return self.act(self.drop(x))


class _ChannelMix(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(1)


def _norm_act_net(act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), _NormAct(8, act), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.LazyLinear(3))


@pytest.mark.parametrize("act", [nn.ReLU(inplace=True), nn.SiLU(), nn.Hardswish(), nn.ReLU6(), nn.Identity()])
def test_batchnorm_subclass_with_activation_is_a_batchnorm(act: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    model = _norm_act_net(act)
    model(x)
    model.eval()
    group = _by_name(prunable_groups(model, x))["0"]
    assert group.prunable, group.reason
    assert ("1", OUT) in group.members
    pruned = prune(model, x, keep={"0": 5}, importance="l1")
    assert pruned[1].num_features == 5 and pruned[1].running_mean.shape == (5,)
    with torch.no_grad():
        assert pruned(x).shape == (1, 3)


def test_batchnorm_subclass_with_channel_mixing_activation_is_refused() -> None:
    x = torch.randn(1, 3, 8, 8)
    model = _norm_act_net(_ChannelMix())
    model(x)
    group = _by_name(prunable_groups(model.eval(), x))["0"]
    assert not group.prunable and "may mix or reorder channels" in group.reason
