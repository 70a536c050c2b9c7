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


# ------------------------------------------------------------------------------------------------
# Channels tied to a tensor no layer produces (the model input, a constant, a parameter used directly)
#
# Torch-Pruning's graph has no node for the model input, so ``conv(x) + x`` looks like an add with one
# producer: the conv's group used to be offered, and pruning it broke the model. ``graph_walk`` records
# the traced forward's leaf operands: such groups are refused; a concat with the input is mapped.

INPUT_ADD = "output channels are tied to the model input by a residual add (the input's channels cannot be removed)"


class _Leafy(nn.Module):
    """A conv (`conv`, cin -> `width`), a 3x3 `stem`, BatchNorms, a depthwise `dw`, a 1x1 `other` (cin ->
    `other`) and a 1x1 `head` (`head_in` -> 2), wired by `wiring` (which uses some of them)."""

    def __init__(self, wiring: str, width: int = 3, other: int = 3, head_in: int = 3, cin: int = 3) -> None:
        super().__init__()
        self.wiring = wiring
        self.stem = nn.Conv2d(cin, cin, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.other = nn.Conv2d(cin, other, 1)
        self.head = nn.Conv2d(head_in, 2, 1)
        self.register_buffer("shift", torch.randn(1, width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.wiring
        if w == "conv(x) + x":
            h = self.conv(x) + x
        elif w == "x + bn(conv(x)) after a functional stem":
            x = torch.relu(x)
            h = x + self.bn(self.conv(x))
        elif w == "x * sigmoid(conv(x))":
            h = x * torch.sigmoid(self.conv(x))
        elif w == "x2 = x * 2; conv(x2) + x2":
            x2 = x * 2
            h = self.conv(x2) + x2
        elif w == "in-place h += x":
            h = self.conv(x)
            h += x
        elif w == "s = bn0(x); conv(s) + s":
            s = self.bn0(x)
            h = self.conv(s) + s
        elif w == "dw(x) + conv(x)":
            h = self.dw(x) + self.conv(x)
        elif w == "cat([x, conv(x)]) + other(x)":
            h = torch.cat([x, self.conv(x)], 1) + self.other(x)
        elif w == "spatial cat([x, conv(x)], 2)":
            h = torch.cat([x, self.conv(x)], 2)
        elif w == "conv(x) + buffer":
            h = self.conv(x) + self.shift
        elif w == "s = stem(x); conv(s) + s":
            s = self.stem(x)
            h = self.conv(s) + s
        elif w == "cat([x, conv(x)])":
            h = torch.cat([x, self.conv(x)], 1)
        elif w == "cat([other(x), x, bn(conv(x))])":
            h = torch.cat([self.other(x), x, self.bn(self.conv(x))], 1)
        elif w == "cat([conv(x), buffer])":
            h = torch.cat([self.conv(x), self.shift.expand(x.shape[0], -1, x.shape[2], x.shape[3])], 1)
        elif w in ("conv(x) * spatial mask + 3", "one-channel input: conv(x) + x"):
            h = self.conv(x) * x.detach().mean(1, keepdim=True) + 3 if "mask" in w else self.conv(x) + x
        else:
            raise AssertionError(w)
        return self.head(torch.relu(h))


def _leafy(wiring: str, **kwargs) -> tuple[nn.Module, list, torch.Tensor]:
    torch.manual_seed(0)
    model = _Leafy(wiring, **kwargs).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (model.bn0, model.bn):
            n = bn.num_features
            bn.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    x = torch.randn(1, kwargs.get("cin", 3), 8, 8, generator=g)
    return model, prunable_groups(model, x), x


@pytest.mark.parametrize(("wiring", "kwargs", "reason"), [
    ("conv(x) + x", {}, INPUT_ADD),
    ("x + bn(conv(x)) after a functional stem", {}, INPUT_ADD),
    ("x * sigmoid(conv(x))", {},
     "output channels are tied to the model input by an element-wise multiply (the input's channels cannot be removed)"),
    ("x2 = x * 2; conv(x2) + x2", {}, INPUT_ADD),
    ("in-place h += x", {}, INPUT_ADD),
    ("s = bn0(x); conv(s) + s", {}, INPUT_ADD),
    ("dw(x) + conv(x)", {}, INPUT_ADD),
    ("cat([x, conv(x)]) + other(x)", {"width": 5, "other": 8, "head_in": 8},
     "output channels are tied to the model input by a concat (the input's channels cannot be removed)"),
    ("spatial cat([x, conv(x)], 2)", {},
     "output channels are tied to the model input by a concat (the input's channels cannot be removed)"),
    ("conv(x) + buffer", {"width": 4, "head_in": 4}, "output channels are tied to a constant or buffer of the model "
     "code (shape [1, 4, 1, 1]) by a residual add, which pruning cannot shrink"),
])
def test_groups_tied_to_the_model_input_or_a_constant_are_refused(wiring: str, kwargs: dict, reason: str) -> None:
    _, groups, _ = _leafy(wiring, **kwargs)
    refused = [(g.name, g.reason) for g in groups if not g.follows and g.name != "head"]
    assert len(refused) == 1 and refused[0][1] == reason, refused
    assert not any(g.prunable for g in groups)  # the layers tied to it follow it: nothing is offered
    assert {f for g in groups for f in g.follows} <= {refused[0][0]}


def test_pruning_a_conv_added_to_the_input_breaks_the_model() -> None:
    """Why ``conv(x) + x`` is refused: removing conv channel 1 everywhere it lives leaves the input's 3 channels."""
    from rlprune_edge.pruning import _copy_and_shrink

    model, _, x = _leafy("conv(x) + x")
    one = torch.tensor([1])
    shrunk = _copy_and_shrink(model, {("conv", OUT): one, ("head", IN): one})
    with torch.no_grad(), pytest.raises(RuntimeError, match="must match the size"):
        shrunk(x)


def _prunes_exactly(model: nn.Module, groups: list, x: torch.Tensor, tmp_path, seeds: range = range(3)) -> nn.Module:
    """Every prunable group at random keep counts: the pruned model computes the dense one with the removed
    channels cut (their filters zeroed, as tests/test_graph_ghost.py does, and their consumers' columns too,
    so that a constant added on the way does not count) and agrees with ONNX Runtime. Returns the last one."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers import ort_relative_error
    from test_graph_ghost import _rel, zeroed

    from rlprune_edge.importance import channel_scores
    from rlprune_edge.pruning import select_channels

    prunable = [g for g in groups if g.prunable]
    scores = channel_scores(model, x, prunable, method="l1")
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        keep = {g.name: int(torch.randint(1, g.channels, (1,), generator=gen)) for g in prunable}
        pruned = prune(model, x, keep=keep, groups=groups, scores=scores)
        removed = select_channels(groups, keep, scores)
        reference = zeroed(model, groups, removed)
        with torch.no_grad():
            for g in prunable:
                for p in g.plan:
                    if p.kind == IN:
                        reference.get_submodule(p.module).weight[:, p.idxs[torch.isin(p.root_idxs, removed[g.name])]] = 0
            assert _rel(pruned(x), reference(x)) <= 1e-5
    assert ort_relative_error(pruned, x, tmp_path / "leafy.onnx") <= 1e-4
    return pruned


def test_an_add_after_a_stem_module_stays_prunable_and_the_stem_joins(tmp_path) -> None:
    model, groups, x = _leafy("s = stem(x); conv(s) + s")
    by = _by_name(groups)
    assert by["stem"].prunable and ("conv", OUT) in by["stem"].members and by["conv"].follows == ["stem"]
    pruned = _prunes_exactly(model, groups, x, tmp_path)
    assert pruned.stem.out_channels == pruned.conv.out_channels == pruned.head.in_channels < 3


@pytest.mark.parametrize(("wiring", "kwargs", "offsets"), [
    ("cat([x, conv(x)])", {"width": 5, "head_in": 8}, {"conv": 3}),
    ("cat([other(x), x, bn(conv(x))])", {"width": 5, "other": 4, "head_in": 12}, {"other": 0, "conv": 7}),
    ("cat([conv(x), buffer])", {"width": 5, "head_in": 10}, {"conv": 0}),
])
def test_a_concat_with_the_input_or_a_buffer_maps_the_conv_at_its_offset(wiring: str, kwargs: dict, offsets: dict,
                                                                         tmp_path) -> None:
    model, groups, x = _leafy(wiring, **kwargs)
    by = _by_name(groups)
    for name, start in offsets.items():
        g = by[name]
        assert g.prunable, g.reason
        head = next(p for p in g.plan if p.module == "head")
        assert head.kind == IN and head.idxs.tolist() == list(range(start, start + g.channels))
    pruned = _prunes_exactly(model, groups, x, tmp_path)
    cut = sum(getattr(model, n).out_channels - getattr(pruned, n).out_channels for n in offsets)
    assert cut > 0 and pruned.head.in_channels == kwargs["head_in"] - cut


@pytest.mark.parametrize(("wiring", "cin"), [("conv(x) * spatial mask + 3", 3), ("one-channel input: conv(x) + x", 1)])
def test_scalars_spatial_masks_and_a_one_channel_input_do_not_tie_channels(wiring: str, cin: int, tmp_path) -> None:
    model, groups, x = _leafy(wiring, width=4, head_in=4, cin=cin)
    assert _by_name(groups)["conv"].prunable, _by_name(groups)["conv"].reason
    _prunes_exactly(model, groups, x, tmp_path)


@pytest.mark.parametrize("wiring", ["conv(x) + x", "s = bn0(x); conv(s) + s", "cat([x, conv(x)])"])
def test_an_input_read_by_a_call_the_recorder_missed_is_still_refused(wiring: str, monkeypatch) -> None:
    """Without the recorded operands (a call made where no torch function mode reaches), autograd's own leaves
    (the input's AccumulateGrad) still tie the group; a concat with the input then stays unmapped."""
    from rlprune_edge.graph_walk import LeafRecorder

    monkeypatch.setattr(LeafRecorder, "__torch_function__",
                        lambda self, func, types, args=(), kwargs=None: func(*args, **(kwargs or {})))
    _, groups, _ = _leafy(wiring, **({"width": 5, "head_in": 8} if "cat" in wiring else {}))
    conv = _by_name(groups)["conv"]
    assert not conv.prunable and ("tied to the model input" in conv.reason or "could not be mapped" in conv.reason)
