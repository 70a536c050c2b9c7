"""Channel importance: Taylor matches its definition, is reproducible, differs from L1 once trained."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import needs_fashion_mnist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rlprune_edge.errors import UserError
from rlprune_edge.graph import prunable_groups
from rlprune_edge.importance import channel_scores

pytestmark = pytest.mark.usefixtures("single_thread")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # learnable labels
    return x, y


def _trained(steps: int = 40) -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    x, y = _data(128, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for i in range(steps):
        sl = slice((i * 32) % 128, (i * 32) % 128 + 32)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[sl]), y[sl]).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def test_taylor_matches_its_definition() -> None:
    """Mean over batches of (sum of w * dL_b/dw over every parameter of channel c in every member)**2."""
    model = _trained(5)
    x, y = _data(16)
    groups = prunable_groups(model, x[:1])
    scores = channel_scores(model, x[:1], groups, calib=[(x[:8], y[:8]), (x[8:], y[8:])])

    want1 = torch.zeros(6, dtype=torch.float64)
    want2 = torch.zeros(8, dtype=torch.float64)
    for sl in (slice(0, 8), slice(8, 16)):
        ref = copy.deepcopy(model).eval()
        nn.functional.cross_entropy(ref(x[sl]), y[sl]).backward()
        wg = {n: (p.detach() * p.grad).double() for n, p in ref.named_parameters()}
        want1 += (wg["conv1.weight"].sum((1, 2, 3)) + wg["conv1.bias"] + wg["bn1.weight"] + wg["bn1.bias"]
                  + wg["conv2.weight"].sum((0, 2, 3))).square()
        want2 += (wg["conv2.weight"].sum((1, 2, 3)) + wg["bn2.weight"] + wg["bn2.bias"]
                  + wg["fc.weight"].sum(0)).square()
    assert torch.allclose(scores["conv1"].double(), want1 / 2, rtol=1e-4, atol=1e-9)
    assert torch.allclose(scores["conv2"].double(), want2 / 2, rtol=1e-4, atol=1e-9)
    assert set(scores) == {g.name for g in groups if g.prunable} == {"conv1", "conv2"}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@needs_fashion_mnist
def test_taylor_ranks_are_stable_across_disjoint_draws_on_the_shipped_vgg19(single_thread) -> None:
    """Issue 15's bar: median per-group Spearman between two disjoint 512-image estimates >= 0.7."""
    from rlprune_edge.checkpoint import default_checkpoint_path, load_checkpoint
    from rlprune_edge.data import load_data

    model, info = load_checkpoint(default_checkpoint_path())
    data = load_data("fashion-mnist", seed=0)
    pool = data.subset("train", 1024, seed=7)
    x, y = pool.normalize(pool.images), pool.labels
    ex = torch.zeros(1, *info.input_shape)
    groups = prunable_groups(model, ex)
    draws = [[(x[i : i + 32], y[i : i + 32]) for i in range(lo, lo + 512, 32)] for lo in (0, 512)]
    a, b = (channel_scores(model, ex, groups, calib=d) for d in draws)
    rho = sorted(_spearman(a[n], b[n]) for n in a)
    median = rho[len(rho) // 2]
    assert median >= 0.7, f"median Spearman {median:.2f} over {len(rho)} groups"


def test_taylor_leaves_the_model_alone_and_is_reproducible() -> None:
    model = _trained(5).train()
    model.conv2.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(96)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    groups = prunable_groups(model, x[:1])
    a = channel_scores(model, x[:1], groups, calib=loader, seed=3, max_batches=2)
    b = channel_scores(model, x[:1], groups, calib=loader, seed=3, max_batches=2)
    c = channel_scores(model, x[:1], groups, calib=loader, seed=4, max_batches=2)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed: same shuffled batches, same scores
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed draws other batches
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert not model.conv2.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # BN stats untouched


def test_taylor_ranks_differ_from_l1_on_a_trained_model() -> None:
    model = _trained()
    x, y = _data(64, seed=2)
    groups = prunable_groups(model, x[:1])
    taylor = channel_scores(model, x[:1], groups, method="taylor", calib=[(x, y)])
    l1 = channel_scores(model, x[:1], groups, method="l1")
    again = channel_scores(model, x[:1], groups, method="taylor", calib=[(x, y)])
    for name in taylor:
        assert torch.equal(taylor[name].argsort(), again[name].argsort())
    assert any(not torch.equal(taylor[n].argsort(), l1[n].argsort()) for n in taylor)
    # L1 is the filters' absolute weight sum
    assert torch.allclose(l1["conv2"], model.conv2.weight.detach().abs().sum((1, 2, 3)))


def test_random_scores_depend_only_on_seed() -> None:
    model = Tiny()
    groups = prunable_groups(model, torch.zeros(1, 3, 8, 8))
    a = channel_scores(model, None, groups, method="random", seed=1)
    b = channel_scores(model, None, groups, method="random", seed=1)
    c = channel_scores(model, None, groups, method="random", seed=2)
    assert a.keys() == {"conv1", "conv2"}
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["conv1"], c["conv1"])
    assert a["conv1"].shape == (6,)


def test_bad_calibration_is_a_user_error() -> None:
    model = Tiny()
    x, y = _data(8)
    groups = prunable_groups(model, x[:1])
    with pytest.raises(UserError, match="calibration"):
        channel_scores(model, x[:1], groups, method="taylor", calib=None)
    with pytest.raises(UserError, match="no batches"):
        channel_scores(model, x[:1], groups, calib=[])
    with pytest.raises(UserError, match="labels"):
        channel_scores(model, x[:1], groups, calib=[(x, y + 10)])
    with pytest.raises(UserError, match="unknown importance"):
        channel_scores(model, x[:1], groups, method="hessian")
    with pytest.raises(UserError, match="batches"):
        channel_scores(model, x[:1], groups, calib=[x])
