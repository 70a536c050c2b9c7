"""The prune distribution follows RL-Pruner's rules; reward presets and arithmetic."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from rlprune_edge.errors import UserError
from rlprune_edge.search.policy import PolicyConfig, PruneDistribution
from rlprune_edge.search.reward import Baseline, RewardWeights, reward, weights_for


def make(seed: int = 0) -> PruneDistribution:
    return PruneDistribution(["a", "b", "c", "d"], [16, 32, 64, 10], [True, True, True, False], seed=seed)


def test_init_proportional_to_channels_and_zero_for_unprunable():
    pd = make()
    np.testing.assert_allclose(pd.pd, [16 / 112, 32 / 112, 64 / 112, 0.0])
    assert pd.pd.sum() == pytest.approx(1.0)


def test_samples_are_normalised_clamped_and_seeded():
    a, b = make(seed=3).sample(20), make(seed=3).sample(20)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.sum() == pytest.approx(1.0)
        assert x[3] == 0.0
        assert (x[:3] >= 1e-5 / 1.5).all()
    spread = np.std([x[0] for x in a])
    assert 0 < spread < 0.04  # noise scale v·u with v = 0.04
    assert not np.array_equal(make(seed=4).sample(1)[0], a[0])


def test_update_moves_toward_best_with_ratio_clip():
    pd = make()
    before = pd.pd.copy()
    best = np.array([0.0, 0.0, 1.0, 0.0])
    pd.update(best)
    assert pd.pd.sum() == pytest.approx(1.0)
    assert pd.pd[2] > before[2] and pd.pd[0] < before[0]
    # before renormalising, the per-group ratio is clipped to [0.8, 1.2]
    raw = before + 0.1 * (best - before)
    ratio = np.clip(raw[:3] / before[:3], 0.8, 1.2)
    expect = before[:3] * ratio
    np.testing.assert_allclose(pd.pd[:3], expect / expect.sum())
    big = make()
    for _ in range(200):
        big.update(best)
    assert big.pd[2] > 0.99 and big.pd[0] >= 0  # converges, never negative


def test_epsilon_cosine_decay_over_first_ten_percent():
    pd = make()
    assert pd.epsilon(0, 100) == pytest.approx(0.4)
    assert pd.epsilon(5, 100) == pytest.approx(0.2)
    assert pd.epsilon(10, 100) == 0.0
    assert pd.epsilon(50, 100) == 0.0
    assert pd.epsilon(0, 3) == pytest.approx(0.4) and pd.epsilon(1, 3) == 0.0


def test_choose_greedy_after_decay_and_explores_before():
    pd = make()
    assert all(pd.choose([0.1, 0.9, 0.5], step=20, total_steps=20) == 1 for _ in range(50))
    picks = {pd.choose([0.1, 0.9, 0.5], step=0, total_steps=100) for _ in range(200)}
    assert picks == {0, 1, 2}


def test_collapse_and_reset():
    pd = make()
    pd.update(np.array([0.0, 0.0, 1.0, 0.0]))
    assert pd.collapsed(0.80, 0.90) and not pd.collapsed(0.82, 0.90)
    pd.reset()
    np.testing.assert_array_equal(pd.pd, pd.init_pd)
    assert pd.resets == 1


def test_state_roundtrip_through_json_continues_the_same_stream():
    a = make(seed=7)
    a.update(a.sample(3)[1])
    state = json.loads(json.dumps(a.state_dict()))
    b = make(seed=99)
    b.load_state_dict(state)
    np.testing.assert_array_equal(a.pd, b.pd)
    for x, y in zip(a.sample(4), b.sample(4), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError):
        PruneDistribution(["x"], [8], [True]).load_state_dict(state)


def test_config_and_no_prunable_group():
    assert PolicyConfig() == PolicyConfig(noise=0.04, lr=0.1, clip=0.2, epsilon=0.4)
    with pytest.raises(ValueError):
        PruneDistribution(["a"], [8], [False])


def test_reward_presets_and_value():
    prof = SimpleNamespace(reward=SimpleNamespace(latency=0.7, flops=0.1, params=0.0))
    assert weights_for("accuracy", prof) == RewardWeights(latency=0.0)
    assert weights_for("flops") == RewardWeights(latency=0.0, flops=0.25)
    assert weights_for("params") == RewardWeights(latency=0.0, params=0.25)
    assert weights_for("latency", prof) == RewardWeights(latency=0.7, flops=0.1)
    assert weights_for("latency", None).latency == 1.0
    with pytest.raises(UserError):
        weights_for("speed")
    base = Baseline(latency_ms=2.0, flops=100.0, params=50.0)
    w = RewardWeights(latency=1.0, flops=0.25, params=0.25)
    assert reward(0.9, 1.0, 50.0, 25.0, base, w) == pytest.approx(0.9 + 0.5 + 0.125 + 0.125)
    assert reward(0.9, 1.0, 50.0, 25.0, base, RewardWeights(latency=0.0)) == pytest.approx(0.9)
