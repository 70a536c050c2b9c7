"""Search loop: budget split, stopping, checkpoint per step, resume == uninterrupted (fake env),
and one real tiny end-to-end step on a small VGG when the pruning stack is present."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune_edge.errors import UserError
from rlprune_edge.search.loop import (
    SearchConfig,
    Target,
    allocate_keep,
    keep_for_latency,
    max_prune_keep,
    run_search,
)
from rlprune_edge.search.reward import RewardWeights


@dataclass
class G:
    name: str
    channels: int
    prunable: bool


class FakeModel(nn.Module):
    def __init__(self, channels: dict[str, int]):
        super().__init__()
        self.w = nn.ParameterDict({k: nn.Parameter(torch.arange(v, dtype=torch.float32) / v) for k, v in channels.items()})


class FakeEnv:
    """Accuracy falls with the square of removed fractions; latency is linear in channels, and the
    'device' is 10% slower than the predictor thinks (so corrections matter)."""

    channel_multiple = 4
    sens = {"a": 0.5, "b": 0.1, "c": 0.05, "fc": 0.0}
    cost = {"a": 0.02, "b": 0.01, "c": 0.005, "fc": 0.001}
    dense = {"a": 16, "b": 32, "c": 64, "fc": 10}

    def __init__(self, interrupt_at: int | None = None):
        self.factor = 1.0
        self.measures = 0
        self.interrupt_at = interrupt_at

    def groups(self, model):
        return [G(k, len(p), k != "fc") for k, p in model.w.items()]

    def scores(self, model, groups):
        return {k: p.detach().clone() for k, p in model.w.items()}

    def candidate(self, model, keep, scores, groups):
        new = FakeModel(keep)
        for k, p in model.w.items():
            idx = torch.argsort(scores[k], descending=True)[: keep[k]].sort().values
            new.w[k].data = p.data[idx] + 0.01 * torch.randn(keep[k])  # torch RNG is seeded per step
        return new

    def evaluate(self, model):
        acc = 0.9 - sum(self.sens[k] * (1 - len(p) / self.dense[k]) ** 2 for k, p in model.w.items())
        return acc + 1e-3 * float(sum(p.detach().sum() for p in model.w.values())) % 1e-3

    def _true(self, keep):
        return sum(self.cost[k] * v for k, v in keep.items())

    def predict_ms(self, keep):
        return self.factor * self._true(keep) / 1.1

    def flops(self, model):
        return sum(len(p) ** 2 for p in model.w.values())

    def params(self, model):
        return sum(len(p) for p in model.w.values())

    def measure(self, model):
        self.measures += 1
        if self.interrupt_at is not None and self.measures == self.interrupt_at:
            raise KeyboardInterrupt
        ms = self._true({k: len(p) for k, p in model.w.items()})
        return ms, ms / self._true(self.dense)

    def correct(self, keep, measured_ms):
        self.factor = measured_ms / (self._true(keep) / 1.1)

    def finetune(self, model, step):
        pass

    def save_model(self, path, model):
        torch.save({k: p.detach() for k, p in model.w.items()}, path)

    def load_model(self, path):
        sd = torch.load(path, weights_only=True)
        m = FakeModel({k: len(v) for k, v in sd.items()})
        for k, v in sd.items():
            m.w[k].data = v
        return m


def dense_figures(env: FakeEnv) -> dict:
    m = FakeModel(env.dense)
    return {"val_acc": env.evaluate(m), "latency_ms": env._true(env.dense), "flops": env.flops(m),
            "params": env.params(m)}


def search(tmp: Path, target: Target, **kw):
    env = kw.pop("env", None) or FakeEnv()
    cfg = SearchConfig(step_ratio=kw.pop("step_ratio", 0.1), candidates=3, rounds=2, seed=kw.pop("seed", 0),
                       equal_latency_steps=kw.pop("equal_latency_steps", True))
    weights = kw.pop("weights", RewardWeights(latency=1.0))
    torch.manual_seed(0)
    return run_search(env, FakeModel(env.dense), target, weights, dense_figures(env), cfg,
                      tmp, progress=False, log=lambda s: None, **kw)


def test_allocate_keep_splits_in_multiples_and_respects_caps():
    keep = allocate_keep([16, 32, 64, 10], [True, True, True, False], [0.1, 0.3, 0.6, 0.0], 24, 4)
    assert keep[3] == 10
    assert sum([16, 32, 64]) - sum(keep[:3]) == 24
    assert all(k % 4 == 0 and k >= 4 for k in keep[:3])
    # a group that is nearly full passes its share on; never below one multiple
    keep = allocate_keep([8, 64], [True, True], [0.9, 0.1], 32, 8)
    assert keep == [8, 32]
    assert allocate_keep([8, 8], [True, True], [0.5, 0.5], 16, 8) == [8, 8]
    # channel counts that are not multiples get aligned when touched
    keep = allocate_keep([20, 64], [True, True], [1.0, 0.0], 8, 8)
    assert keep[0] % 8 == 0 and keep[1] == 64
    assert max_prune_keep([16, 32, 10], [True, True, False], 8) == [8, 8, 10]


def test_keep_for_latency_is_the_fewest_channels_that_reach_the_goal():
    env = FakeEnv()
    names, ch, prunable = ["a", "b", "c", "fc"], [16, 32, 64, 10], [True, True, True, False]
    action = [0.2, 0.3, 0.5, 0.0]

    def pred(keep):
        return env.predict_ms(dict(zip(names, keep, strict=True)))

    goal = 0.8 * pred(ch)
    keep = keep_for_latency(env, names, ch, prunable, action, 4, goal)
    removed = sum(ch) - sum(keep)
    assert pred(keep) <= goal and keep[3] == 10
    assert pred(allocate_keep(ch, prunable, action, removed - 4, 4)) > goal  # one unit less is too slow
    # an action that puts the cut on the cheap group needs more channels for the same latency
    cheap = keep_for_latency(env, names, ch, prunable, [0.01, 0.01, 0.98, 0.0], 4, goal)
    assert pred(cheap) <= goal and sum(ch) - sum(cheap) > removed
    # unreachable: the smallest allowed widths
    assert keep_for_latency(env, names, ch, prunable, action, 4, 0.0) == max_prune_keep(ch, prunable, 4)


def test_latency_steps_size_candidates_to_one_predicted_latency(tmp_path):
    res = search(tmp_path / "eq", Target.parse_latency("0.6x"))
    assert res.reached
    for s in res.steps:
        assert s["step_goal_ms"] is not None and s["predicted_latency_ms"] <= s["step_goal_ms"] + 1e-9
    # the channel-budget rule of the paper: off for rewards without a latency term, and on request
    acc = search(tmp_path / "acc", Target.parse_latency("0.6x"), weights=RewardWeights(latency=0.0))
    off = search(tmp_path / "off", Target.parse_latency("0.6x"), equal_latency_steps=False)
    for r in (acc, off):
        assert all(s["step_goal_ms"] is None for s in r.steps)
        # step_ratio 0.1 of 112 prunable channels, in units of 4: 12 per step (the last may be shrunk)
        assert all(s["channels_removed"] == 12 for s in r.steps[:-1])


class OptimisticEnv(FakeEnv):
    """A predictor that stays 30% optimistic: corrections are ignored."""

    def predict_ms(self, keep):
        return 0.7 * self._true(keep)

    def correct(self, keep, measured_ms):
        """Ignore the measurement: the prediction stays wrong (what this env is for)."""


def test_latency_steps_keep_going_when_the_predictor_is_optimistic(tmp_path):
    res = search(tmp_path, Target.parse_latency("0.5x"), env=OptimisticEnv(), step_ratio=0.3)
    assert res.reached and res.steps[-1]["measured_ratio"] <= 0.5
    # once the predictor thinks the goal is met, a step is the PD's halved step (34 channels -> 4 units
    # of 4), not the one unit that would meet the (wrong) prediction
    assert min(s["channels_removed"] for s in res.steps) >= 16


def test_latency_target_resume_matches_uninterrupted(tmp_path):
    full = search(tmp_path / "full", Target.parse_latency("0.5x"))
    search(tmp_path / "part", Target.parse_latency("0.5x"), stop_after=2)
    resumed = search(tmp_path / "part", Target.parse_latency("0.5x"), resume=True)
    assert [s["keep"] for s in resumed.steps] == [s["keep"] for s in full.steps]
    assert [s["step_goal_ms"] for s in resumed.steps] == [s["step_goal_ms"] for s in full.steps]


def test_target_parsing():
    assert Target.parse_latency("0.5x") == Target("ratio", 0.5)
    assert Target.parse_latency("3ms") == Target("ms", 3.0)
    for bad in ("fast", "1.5x", "0x", "-2ms"):
        with pytest.raises(UserError):
            Target.parse_latency(bad)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(UserError):
            Target.sparsity(bad)


def test_sparsity_target_is_met_and_log_complete(tmp_path):
    res = search(tmp_path, Target.sparsity(0.5))
    assert res.reached
    last = res.steps[-1]
    assert last["sparsity"] >= 0.5 - 4 / 112 / 2
    assert len(res.steps) <= 6
    for s in res.steps:
        for key in ("step", "val_acc", "predicted_latency_ms", "measured_latency_ms", "flops", "params"):
            assert key in s
        assert (tmp_path / s["model_file"]).exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(state["steps"]) == len(res.steps)
    # the sensitive small group 'a' is pruned least (relative), the insensitive 'c' most
    keep = dict(zip(["a", "b", "c", "fc"], last["keep"], strict=True))
    assert keep["a"] / 16 >= keep["c"] / 64


def test_latency_target_stops_on_measured_ratio(tmp_path):
    res = search(tmp_path, Target.parse_latency("0.6x"))
    assert res.reached and res.steps[-1]["measured_ratio"] <= 0.6
    assert all(s["measured_ratio"] > 0.6 for s in res.steps[:-1])


def test_resume_reaches_same_result_as_uninterrupted(tmp_path):
    full = search(tmp_path / "full", Target.sparsity(0.6))
    part = search(tmp_path / "part", Target.sparsity(0.6), stop_after=2)
    assert len(part.steps) == 2
    resumed = search(tmp_path / "part", Target.sparsity(0.6), resume=True)
    assert [s["keep"] for s in resumed.steps] == [s["keep"] for s in full.steps]
    assert [s["val_acc"] for s in resumed.steps] == [s["val_acc"] for s in full.steps]
    for (k, a), (_, b) in zip(full.model.w.items(), resumed.model.w.items(), strict=True):
        assert torch.equal(a, b), k


def test_ctrl_c_leaves_last_checkpoint_and_resume_matches(tmp_path):
    full = search(tmp_path / "full", Target.sparsity(0.6))
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "cut", Target.sparsity(0.6), env=FakeEnv(interrupt_at=3))
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert len(state["steps"]) == 2
    resumed = search(tmp_path / "cut", Target.sparsity(0.6), resume=True)
    assert [s["keep"] for s in resumed.steps] == [s["keep"] for s in full.steps]
    for (_, a), (_, b) in zip(full.model.w.items(), resumed.model.w.items(), strict=True):
        assert torch.equal(a, b)


def test_resume_with_other_settings_is_refused(tmp_path):
    search(tmp_path, Target.sparsity(0.5), stop_after=1)
    with pytest.raises(UserError, match="different settings"):
        search(tmp_path, Target.sparsity(0.6), resume=True)
    with pytest.raises(UserError, match="no search state"):
        search(tmp_path / "empty", Target.sparsity(0.6), resume=True)


def test_bn_recalibration_is_the_exact_average_over_the_batches():
    """EagleEye's adaptive BN, run channels-last for speed: running statistics are the plain average of
    the per-batch statistics (cumulative momentum), the model comes back in eval mode and contiguous."""
    from rlprune_edge.search.env import recalibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) for i in range(3)]
    recalibrate_bn(model, batches)
    with torch.no_grad():
        acts = [model[0](x) for x in batches]
    mean = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    var = torch.stack([a.var((0, 2, 3), unbiased=True) for a in acts]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-4, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training
    assert model[0].weight.is_contiguous()
