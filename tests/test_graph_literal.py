"""A channel count held as a literal of the model code (``graph_check``).

``x.view(x.size(0), 16, -1)`` and ``x.view(x.size(0), x.size(1), -1)`` trace identically: autograd
records shapes, not where they came from. Pruning the channels before the literal one leaves the 16
in place and the pruned model fails at forward. ``prunable_groups`` now prunes one channel step of
every group that passes through a view/reshape/flatten on a copy and refuses the group when the
forward fails. These tests build the patterns by hand: the literal ones are refused with the reason
and cannot be pruned; the ones that read the count from the tensor stay prunable and exact.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rlprune_edge.graph_check as graph_check
from rlprune_edge.errors import UserError
from rlprune_edge.graph import prunable_groups
from rlprune_edge.importance import channel_scores
from rlprune_edge.models import build_model
from rlprune_edge.pruning import prune, select_channels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import randomize_bn  # noqa: E402
from test_graph_ghost import zeroed  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

BREAKS = "pruning it breaks the model at forward (a fixed channel count in the model code"


class Head(nn.Module):
    """conv → BN → ReLU → a reshape of the channels (`mode`) → Linear."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 16 if mode in ("flatten", "flat_literal") else 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        n, _, h, w = x.shape
        if self.mode == "literal":
            return self.fc(x.view(x.size(0), 16, -1).mean(-1))
        if self.mode == "reshape_literal":
            return self.fc(x.reshape(n, 16, h * w).mean(-1))
        if self.mode == "flat_literal":
            return self.fc(x.view(n, 256))
        if self.mode == "size1":
            return self.fc(x.view(x.size(0), x.size(1), -1).mean(-1))
        return self.fc(torch.flatten(x, 1))


class Split(nn.Module):
    """conv → flatten(`start`) → ``view(n, 16, 4, 4)`` (literal, or the conv's own width) → conv."""

    def __init__(self, start: int, literal: bool = True) -> None:
        super().__init__()
        self.start, self.literal = start, literal
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        c = 16 if self.literal else x.size(1)
        x = self.conv2(x.flatten(self.start).view(x.size(0), c, 4, 4))
        return self.fc(x.mean((2, 3)))


class SE(nn.Module):
    """A classic squeeze-excitation gate, ``pool(x).view(n, c)`` → fc → fc → ``.view(n, c, 1, 1)``."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 4)
        self.fc2 = nn.Linear(4, 16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        n, c = x.shape[:2]
        c = 16 if self.literal else c
        y = nn.functional.adaptive_avg_pool2d(x, 1).view(n, c)
        y = self.fc2(torch.relu(self.fc1(y))).view(n, c, 1, 1)
        return self.fc(self.conv2(x * torch.sigmoid(y)).mean((2, 3)))


class Grouped(nn.Module):
    """conv read whole by a grouped conv (groups=4: blocks of 4) and by a reshape into the classifier."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.literal = literal
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gconv = nn.Conv2d(16, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        c = 16 if self.literal else h.size(1)
        return self.fc(torch.cat([self.gconv(h).mean((2, 3)), h.view(h.size(0), c, -1).mean(-1)], 1))


class TwoHeads(nn.Module):
    """Two branches, each with its classifier: a literal view after `a`, a flatten after `b`."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.fc_a = nn.Linear(8, 10)
        self.fc_b = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x)).view(x.size(0), 8, -1).mean(-1)
        return self.fc_a(a) + self.fc_b(torch.flatten(torch.relu(self.b(x)), 1))


LITERAL = {
    "view(n, 16, -1)": lambda: Head("literal"),
    "reshape(n, 16, h * w)": lambda: Head("reshape_literal"),
    "view(n, 256) into a Linear": lambda: Head("flat_literal"),
    "flatten(2).view(n, 16, 4, 4)": lambda: Split(2),
    "flatten(1).view(n, 16, 4, 4)": lambda: Split(1),
    "view(n, 16) in an SE gate": lambda: SE(True),
    "view(n, 16, -1) beside a grouped conv": lambda: Grouped(True),
}
FROM_TENSOR = {
    "view(n, x.size(1), -1)": lambda: Head("size1"),
    "torch.flatten(x, 1)": lambda: Head("flatten"),
    "view(n, x.size(1), 4, 4)": lambda: Split(2, literal=False),
    "view(n, c) in an SE gate": lambda: SE(False),
    "view(n, x.size(1), -1) beside a grouped conv": lambda: Grouped(False),
}


def _dense(model: nn.Module) -> tuple[nn.Module, list, torch.Tensor]:
    torch.manual_seed(0)
    model = randomize_bn(model.eval(), 1)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    return model, prunable_groups(model, x), x


@pytest.mark.parametrize("case", LITERAL)
def test_a_literal_channel_count_is_refused_and_never_pruned_into_a_failing_model(case: str) -> None:
    model, groups, x = _dense(LITERAL[case]())
    conv = next(g for g in groups if g.name == "conv")
    assert not conv.prunable and conv.reason.startswith(BREAKS), conv.reason
    assert conv.blocks == 1 and conv.block_ids is None
    with pytest.raises(UserError, match="cannot be pruned"):
        prune(model, x, keep={"conv": 8}, importance="l1", groups=groups)
    for g in groups:  # what stays offered really prunes: down to one step and to the minimum
        if g.prunable:
            for keep in (g.channels - g.blocks, g.blocks):
                with torch.no_grad():
                    assert prune(model, x, {g.name: keep}, importance="l1", groups=groups)(x).shape == (2, 10)


def test_the_reason_names_the_failure() -> None:
    _, groups, _ = _dense(Head("reshape_literal"))
    reason = next(g for g in groups if g.name == "conv").reason
    assert reason == f"{BREAKS}, e.g. view(N, 16, -1)): shape '[2, 16, 16]' is invalid for input of size 480"


@pytest.mark.parametrize("case", FROM_TENSOR)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_channel_count_read_from_the_tensor_stays_prunable_and_exact(case: str, seed: int) -> None:
    model, groups, x = _dense(FROM_TENSOR[case]())
    conv = next(g for g in groups if g.name == "conv")
    assert conv.prunable, conv.reason
    if case.endswith("grouped conv"):
        assert conv.blocks == 4
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: g.blocks * int(torch.randint(1, g.channels // g.blocks, (1,), generator=gen))
            for g in groups if g.prunable}
    scores = channel_scores(model, x, [g for g in groups if g.prunable], method="l1")
    pruned = prune(model, x, keep=keep, groups=groups, scores=scores)
    assert pruned.conv.out_channels == keep["conv"] < 16
    reference = zeroed(model, groups, select_channels(groups, keep, scores))
    with torch.no_grad():
        y, want = pruned(x), reference(x)
    assert float((y - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_only_the_group_that_breaks_is_refused_when_several_are_tried(monkeypatch) -> None:
    calls: list[list[str]] = []
    real = graph_check.dry_run

    def counting(model, inputs, groups, want):  # noqa: ANN001, ANN202
        calls.append([g.name for g in groups])
        return real(model, inputs, groups, want)

    monkeypatch.setattr(graph_check, "dry_run", counting)
    _, groups, _ = _dense(TwoHeads())
    by = {g.name: g for g in groups}
    assert by["a"].reason.startswith(BREAKS) and by["b"].prunable
    assert sorted(map(sorted, calls)) == [["a"], ["a", "b"], ["b"]] and len(calls[0]) == 2  # together, then each


def test_the_trial_leaves_the_model_as_it_was() -> None:
    model = Head("literal").train()
    randomize_bn(model, 1)
    before = copy.deepcopy(model.state_dict())
    prunable_groups(model, torch.randn(2, 3, 4, 4))
    assert model.training and model.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.conv.weight.shape == (16, 3, 3, 3) and model.fc.in_features == 16


def test_groups_without_a_reshape_cost_no_trial_and_a_flatten_one_forward(monkeypatch) -> None:
    calls: list[list[str]] = []
    real = graph_check.dry_run

    def counting(model, inputs, groups, want):  # noqa: ANN001, ANN202
        calls.append([g.name for g in groups])
        return real(model, inputs, groups, want)

    monkeypatch.setattr(graph_check, "dry_run", counting)
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 10, 1))
    assert sum(g.prunable for g in prunable_groups(plain, torch.randn(1, 3, 8, 8))) == 2
    assert calls == []
    torch.manual_seed(0)
    vgg = build_model("vgg11", 0.125, 10)
    groups = prunable_groups(vgg, torch.randn(1, 3, 32, 32))
    assert calls == [["features.25"]]  # the last conv, flattened into the classifier: tried once, kept
    assert next(g for g in groups if g.name == "features.25").prunable


def test_an_output_shape_change_is_a_reason() -> None:
    model, groups, x = _dense(Head("flatten"))
    conv = next(g for g in groups if g.name == "conv")
    assert graph_check.dry_run(model, (x,), [conv], [(2, 10)]) is None
    assert graph_check.dry_run(model, (x,), [conv], [(2, 9)]) == graph_check.SHAPE_REASON.format("[2, 9]", "[2, 10]")
