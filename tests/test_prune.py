"""Pruning engine: random keep counts on real architectures, identity, zeroed channels, alignment."""

from __future__ import annotations

import copy
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.graph import DEPTHWISE, IN, prunable_groups
from rlprune_edge.models import ZOO_NAMES, build_model
from rlprune_edge.pruning import _prune_via_depgraph, align_keep, prune, removal_plan, select_channels

TORCHVISION = (
    "torchvision:resnet18",
    "torchvision:mobilenet_v3_large",
    "torchvision:googlenet",
    "torchvision:densenet121",
)


sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import randomize_bn  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")  # 2 shared cores: 2 torch threads ran 80x slower here


@cache
def _dense(name: str) -> tuple[nn.Module, list]:
    """Built once per session (torchvision models take seconds to initialise): model and its groups."""
    torch.manual_seed(0)
    model = build_model(name, width=0.25) if name in ZOO_NAMES else build_model(name, num_classes=10)
    model = randomize_bn(model, 0).eval()
    groups = prunable_groups(model, torch.zeros(1, *model.input_shape))
    return model, groups


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _expected_params(model: nn.Module, groups: list, removed: dict[str, torch.Tensor]) -> int:
    """Parameter count after removing `removed` root channels, computed from the groups' members."""
    cut: dict[tuple[str, str], set[int]] = {}
    for g in groups:
        if g.name not in removed:
            continue
        gone = set(removed[g.name].tolist())
        for p in g.plan:
            side = "in" if p.kind == IN else "out"
            cut.setdefault((p.module, side), set()).update(
                int(i) for i, r in zip(p.idxs.tolist(), p.root_idxs.tolist(), strict=True) if r in gone
            )
    total = _params(model)
    for name in {n for n, _ in cut}:
        m = model.get_submodule(name)
        ro, ri = len(cut.get((name, "out"), ())), len(cut.get((name, "in"), ()))
        before = sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            out_c = m.out_channels - ro
            in_per_group = 1 if m.groups > 1 else m.in_channels - ri
            after = out_c * in_per_group * k + (out_c if m.bias is not None else 0)
        elif isinstance(m, nn.Linear):
            out_f, in_f = m.out_features - ro, m.in_features - ri
            after = out_f * in_f + (out_f if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            after = 2 * (m.num_features - ro) if m.affine else 0
        else:
            raise AssertionError(f"unexpected member type {type(m).__name__}")
        total -= before - after
    return total


def _onnx_matches(model: nn.Module, x: torch.Tensor, tmp_path) -> float:
    """Max relative difference between ONNX Runtime and torch on `x`."""
    import onnxruntime as ort

    from rlprune_edge.onnx_io import export_onnx

    path = export_onnx(model, tmp_path / "m.onnx", tuple(x.shape[1:]), batch=x.shape[0])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def _check_random_prune(name: str, tmp_path, cross_check: bool) -> None:
    model, groups = _dense(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, *model.input_shape, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    prunable = [g for g in groups if g.prunable]
    assert prunable, name
    keep = {g.name: int(torch.randint(1, g.channels + 1, (1,), generator=gen)) for g in prunable}
    scores = {g.name: torch.rand(g.channels, generator=gen) for g in prunable}

    pruned = prune(model, x[:1], keep, scores=scores, groups=groups)

    # original untouched, pruned model is a different object with its own tensors
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert pruned is not model and not pruned.training
    removed = select_channels(groups, keep, scores)
    assert _params(pruned) == _expected_params(model, groups, removed) < _params(model)
    # the named layer of each group now has exactly `keep` output channels
    for g in prunable:
        layer = pruned.get_submodule(g.name)
        assert getattr(layer, "out_channels", getattr(layer, "out_features", None)) == keep[g.name], g.name
    with torch.no_grad():
        y = pruned(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert _onnx_matches(pruned, x, tmp_path) < 1e-4
    if cross_check:  # Torch-Pruning's own group-by-group surgery gives the very same weights
        ref = _prune_via_depgraph(model, x[:1], removed).state_dict()
        got = pruned.state_dict()
        assert ref.keys() == got.keys()
        for k in ref:
            assert torch.equal(ref[k], got[k]), k


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_random_keep_zoo(name: str, tmp_path) -> None:
    # Torch-Pruning's reference path re-maps every concat per group: quadratic on DenseNet (~8 s)
    _check_random_prune(name, tmp_path, cross_check=name != "densenet121")


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_random_keep_torchvision(name: str, tmp_path) -> None:
    _check_random_prune(name, tmp_path, cross_check=name.endswith("resnet18"))


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv3_small", "googlenet"])
def test_keep_all_is_identity(name: str) -> None:
    model, groups = _dense(name)
    x = torch.randn(2, *model.input_shape)
    pruned = prune(model, x[:1], {g.name: g.channels for g in groups}, importance="l1", groups=groups)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), model.state_dict().values(), strict=True))


@pytest.mark.parametrize("name", ["vgg11", "resnet20", "mobilenetv3_small", "densenet121"])
def test_pruning_a_zeroed_channel_changes_nothing(name: str) -> None:
    """Zero one channel's filters and BN affine in every member that produces it, then remove it."""
    dense, groups = _dense(name)
    model = copy.deepcopy(dense)
    x = torch.randn(4, *model.input_shape, generator=torch.Generator().manual_seed(2))
    for g in [g for g in groups if g.prunable][:4]:
        c = g.channels // 2
        with torch.no_grad():
            for p in g.plan:
                if p.kind == IN:
                    continue
                m = model.get_submodule(p.module)
                for idx in p.idxs[p.root_idxs == c].tolist():
                    m.weight[idx] = 0
                    if m.bias is not None:
                        m.bias[idx] = 0
        scores = {g.name: torch.ones(g.channels)}
        scores[g.name][c] = 0.0
        pruned = prune(model, x[:1], {g.name: g.channels - 1}, scores=scores, groups=groups)
        with torch.no_grad():
            want, got = model(x), pruned(x)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-5, g.name
        assert _params(pruned) < _params(model)


def test_align_keep_rules() -> None:
    _, groups = _dense("vgg11")  # width 0.25: 16, 32, 64, 128 ... channels
    g = next(g for g in groups if g.prunable and g.channels == 32)
    assert align_keep({g.name: 13}, groups, 8) == {g.name: 16}  # nearest
    assert align_keep({g.name: 12}, groups, 8) == {g.name: 16}  # halves round up
    assert align_keep({g.name: 11}, groups, 8) == {g.name: 8}
    assert align_keep({g.name: 3}, groups, 8) == {g.name: 8}  # never below one multiple
    assert align_keep({g.name: 31}, groups, 8) == {g.name: 32}
    assert align_keep({g.name: 31}, groups, 64) == {g.name: 32}  # never above the original
    assert align_keep({g.name: 7}, groups, 1) == {g.name: 7}
    assert align_keep({g.name: np.int64(9)}, groups, 4) == {g.name: 8}
    for bad in (0, -3, 33, 2.5, "8", True):
        with pytest.raises(UserError, match=g.name):
            align_keep({g.name: bad}, groups, 8)
    with pytest.raises(UserError, match="no_such_layer"):
        align_keep({"no_such_layer": 4}, groups, 1)
    with pytest.raises(UserError, match="channel_multiple"):
        align_keep({g.name: 8}, groups, 0)
    out = next(g for g in groups if not g.prunable)
    assert align_keep({out.name: out.channels}, groups, 8) == {out.name: out.channels}
    with pytest.raises(UserError, match="cannot be pruned"):
        align_keep({out.name: 1}, groups, 1)


def test_channel_multiple_applied_by_prune() -> None:
    model, groups = _dense("resnet20")  # width 0.25: 4, 8, 16 channels
    keep = {g.name: max(1, g.channels - 3) for g in groups if g.prunable}
    pruned = prune(model, torch.zeros(1, 3, 32, 32), keep, importance="l1", channel_multiple=4, groups=groups)
    for g in groups:
        if g.prunable:
            assert pruned.get_submodule(g.name).out_channels % 4 == 0


def test_prune_errors_are_user_errors() -> None:
    model, groups = _dense("resnet20")
    g = next(g for g in groups if g.prunable)
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(UserError, match="calibration"):
        prune(model, x, {g.name: 1}, importance="taylor", calib=None, groups=groups)
    with pytest.raises(UserError, match="unknown importance"):
        prune(model, x, {g.name: 1}, importance="magic", groups=groups)
    with pytest.raises(UserError, match=g.name):
        prune(model, x, {g.name: 1}, scores={g.name: torch.ones(g.channels + 1)}, groups=groups)
    # groups of the dense model do not describe a pruned model
    small = prune(model, x, {g.name: 1}, importance="l1", groups=groups)
    with pytest.raises(UserError, match="recompute"):
        prune(small, x, {g.name: 1}, importance="l1", groups=groups)


def test_pruned_model_keeps_names_and_can_be_pruned_again() -> None:
    model, groups = _dense("mobilenetv3_small")
    x = torch.randn(2, 3, 32, 32)
    keep = {g.name: max(1, g.channels // 2) for g in groups if g.prunable}
    once = prune(model, x[:1], keep, importance="l1", groups=groups)
    regroups = prunable_groups(once, x[:1])
    assert [g.name for g in regroups] == [g.name for g in groups]
    assert {g.name: g.channels for g in regroups if g.name in keep} == keep
    twice = prune(once, x[:1], {g.name: 1 for g in regroups if g.prunable}, importance="random")
    with torch.no_grad():
        assert twice(x).shape == (2, 10)


def test_depthwise_members_shrink_with_their_producer() -> None:
    model, groups = _dense("mobilenetv3_small")
    g = next(g for g in groups if g.prunable and any(k == DEPTHWISE for _, k in g.members))
    pruned = prune(model, torch.zeros(1, 3, 32, 32), {g.name: 3}, importance="l1", groups=groups)
    for name, kind in g.members:
        if kind == DEPTHWISE:
            dw = pruned.get_submodule(name)
            assert dw.in_channels == dw.out_channels == dw.groups == 3


def test_checkpoint_round_trip(tmp_path) -> None:
    from rlprune_edge.checkpoint import load_checkpoint, resolve_model, save_checkpoint

    for name in ("resnet20", "mobilenetv3_small", "densenet121"):
        torch.manual_seed(0)
        model, info = resolve_model(name, width=0.25)
        model = randomize_bn(model, 3).eval()
        x = torch.randn(2, 3, 32, 32)
        groups = prunable_groups(model, x[:1])
        gen = torch.Generator().manual_seed(4)
        keep = {g.name: int(torch.randint(1, g.channels + 1, (1,), generator=gen)) for g in groups if g.prunable}
        pruned = prune(model, x[:1], keep, importance="random", groups=groups)
        path = save_checkpoint(tmp_path / f"{name}.pt", pruned, info)
        loaded, info2 = load_checkpoint(path)
        assert info2.layer_shapes
        with torch.no_grad():
            assert torch.equal(loaded(x), pruned.eval()(x)), name


def test_removal_plan_unions_concat_slices() -> None:
    """A BatchNorm after a concat loses channels from several groups, each in its own slice."""
    model, groups = _dense("densenet121")
    gen = torch.Generator().manual_seed(5)
    prunable = [g for g in groups if g.prunable]
    removed = select_channels(
        prunable,
        {g.name: max(1, g.channels // 2) for g in prunable},
        {g.name: torch.rand(g.channels, generator=gen) for g in prunable},
    )
    plan = removal_plan(prunable, removed)
    owners: dict[tuple[str, str], int] = {}
    for g in prunable:
        for p in g.plan:
            owners[(p.module, p.kind)] = owners.get((p.module, p.kind), 0) + 1
    shared = [key for key, n in owners.items() if n > 1 and key in plan]
    assert shared, "densenet should have modules fed by several groups"
    for key in shared:
        idx = plan[key]
        assert len(idx) == len(set(idx.tolist()))
