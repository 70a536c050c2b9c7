"""The plan search with depth plans (stub environment with two removable blocks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_plan_search import CHANNELS, NAMES, StubEnv, run, true_ms

from rlprune_edge.search.loop import Target
from rlprune_edge.search.plan_search import PlanSearchConfig

BLOCK_MS = {"blk1": 0.05, "blk2": 0.08}  # what removing each block saves


class DepthStub(StubEnv):
    """StubEnv whose model also has two removable blocks; `gain(removed)` is their accuracy effect."""

    blocks = ["blk1", "blk2"]
    block_influence = {"blk1": 0.2, "blk2": 0.1}  # blk2 goes first

    def __init__(self, accuracy, gain, share: float = 1.0) -> None:
        super().__init__(accuracy)
        self.gain = gain
        self.share = share  # the part of a removal's predicted saving the "device" shows
        self.predicted_removed: set[tuple[str, ...]] = set()

    def _ms(self, keep, removed=()):
        return true_ms(keep) - sum(BLOCK_MS[b] for b in removed)

    def predict_ms(self, keep, removed=()):
        self.predicted_removed.add(tuple(removed))
        return self._ms(keep, removed) * self.correction

    def correct(self, keep, measured_ms):
        self.correction = measured_ms / true_ms(keep)

    def build(self, keep, removed=()):
        self.builds += 1
        return {"keep": dict(keep), "removed": tuple(removed), "bonus": 0.0}

    def _correct(self, model):
        acc = min(1.0, max(0.0, self.accuracy(model["keep"]) + self.gain(model["removed"]) + model["bonus"]))
        v = np.zeros(self.n_images, dtype=bool)
        v[: int(round(acc * self.n_images))] = True
        return v

    def device_ms(self, model):
        return true_ms(model["keep"]) - self.share * sum(BLOCK_MS[b] for b in model["removed"])

    def measure(self, models):
        self.measured.append([(m["keep"], m["removed"]) for m in models])
        dense = true_ms({})
        return dense, [(self.device_ms(m), self.device_ms(m) / dense) for m in models]


def kept_fraction(keep):
    return sum(keep.get(n, c) / c for n, c in zip(NAMES[:4], CHANNELS[:4], strict=True)) / 4


def test_depth_plans_are_proposed_sized_to_the_goal_and_can_win(tmp_path):
    # accuracy grows with the widths kept; removing blk2 costs little, blk1 a lot
    env = DepthStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: -0.02 * ("blk2" in rm) - 0.3 * ("blk1" in rm))
    cfg = PlanSearchConfig(candidates=12, per_round=6, probe_top=3, depth_plans=4, ramps=(), seed=0)
    res = run(env, tmp_path, config=cfg)
    depth = [r for r in res.records if r.get("kind", "").startswith("depth")]
    assert [r["removed"] for r in depth] == [["blk2"], ["blk1", "blk2"]]  # least influential first
    goal = res.records[0]["pred_ms"]
    for r in depth:  # wider than the uniform plan at the same predicted latency
        assert r["pred_ms"] <= goal + 1e-9 and sum(r["keep"]) > sum(res.records[0]["keep"])
    assert res.removed_blocks == ["blk2"] and not res.fallback_to_uniform
    assert res.chosen["removed_blocks"] == ["blk2"] and res.reached
    assert {tuple(m.get("removed", ())) for m in res.measurements} == {(), ("blk2",)}  # the fit measured the winner
    # sampled plans of later rounds inherit the best plan's removed blocks
    assert any(r["kind"] == "sampled" and r.get("removed") == ["blk2"] for r in res.records)


def test_depth_plans_that_cost_accuracy_lose_to_uniform_and_none_when_disabled(tmp_path):
    env = DepthStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: -0.3 * len(rm))
    res = run(env, tmp_path, config=PlanSearchConfig(candidates=6, per_round=6, probe_top=3, ramps=(), seed=0))
    assert res.removed_blocks == [] and not any(r.get("removed") for r in [res.chosen, res.uniform] if r.get("removed"))
    off = DepthStub(lambda k: 0.5, lambda rm: 0.0)
    res = run(off, tmp_path / "off", config=PlanSearchConfig(candidates=4, per_round=4, depth_plans=0, seed=0))
    assert not any("removed" in r for r in res.records) and off.predicted_removed == {()}


def test_depth_search_resumes_to_the_uninterrupted_result(tmp_path):
    def make():
        return DepthStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: -0.01 * len(rm))

    cfg = PlanSearchConfig(candidates=12, per_round=6, probe_top=2, seed=3)
    whole = run(make(), tmp_path / "a", config=cfg)
    assert run(make(), tmp_path / "b", config=cfg, stop_after=1) is None
    resumed = run(make(), tmp_path / "b", config=cfg, resume=True)
    assert resumed.keep == whole.keep and resumed.removed_blocks == whole.removed_blocks
    assert [r["keep"] for r in resumed.records] == [r["keep"] for r in whole.records]


def test_target_kinds_without_latency_still_offer_depth_plans(tmp_path):
    env = DepthStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: 0.0)
    cfg = PlanSearchConfig(candidates=4, per_round=4, depth_plans=1, ramps=(), seed=0)
    res = run(env, tmp_path, target=Target("sparsity", 0.5), config=cfg)
    assert [r.get("removed") for r in res.records if r["kind"].startswith("depth")] == [["blk2"]]


def test_compress_with_depth_plans_end_to_end(tmp_path, monkeypatch):
    """A real (tiny) ResNet run: depth plans are screened beside the width plans, the report names
    the removable blocks and what was removed, and model.pt rebuilds with exactly those blocks gone."""
    import json

    from helpers import tiny_depth_compress

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.cli import main

    args = tiny_depth_compress(tmp_path, monkeypatch, "resnet20", 0.25)
    out = tmp_path / "out"
    assert main(args) == 0
    s = json.loads((out / "report.json").read_text())["search"]
    assert set(s["removable_blocks"]) >= {"layer1.1", "layer3.2"} and s["depth_plans"] == 2
    depth = [r for r in s["plans"] if r["kind"].startswith("depth") and r["round"] == 0]
    assert [len(r["removed"]) for r in depth] == [1, 2]  # a sparsity target: `--depth-plans` sets
    model, info = load_checkpoint(out / "model.pt")
    assert (info.removed_blocks or []) == s["removed_blocks"] == s["chosen"]["removed_blocks"]


@pytest.mark.parametrize("recheck", [0.30, 0.01])
def test_depth_plans_are_calibrated_by_measurement_when_removal_saves_less_than_predicted(tmp_path, recheck):
    """The latency model credits a removal with twice what the device shows: the depth plans are
    measured beside uniform, re-sized with the measured share, and a depth plan that wins is
    within the target when measured (never over it). A set read within `depth_recheck` of its
    prediction (0.30 here) keeps its one reading; further off (0.01), it is re-sized and read again,
    nearer the uniform plan's latency."""
    env = DepthStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: -0.3 * ("blk1" in rm), share=0.5)
    cfg = PlanSearchConfig(candidates=6, per_round=6, probe_top=3, ramps=(), depth_recheck=recheck, seed=0)
    res = run(env, tmp_path, config=cfg)
    state = json.loads((tmp_path / "state" / "plan_state.json").read_text())
    cal = state["depth_calibration"]
    assert len(cal) == (1 if recheck > 0.2 else 2) and [p["removed"] for p in cal[0]["plans"]] == [["blk2"], ["blk1", "blk2"]]
    readings = [c["plans"][0]["ratio"] / c["uniform_ratio"] for c in cal]
    assert readings[0] > 1.01
    if len(readings) == 2:
        assert abs(readings[1] - 1.0) < abs(readings[0] - 1.0)  # re-sized toward the uniform plan's latency
    depth = [r for r in res.records if r["kind"] == "depth -1" and r["round"] == 0]
    assert env.device_ms({"keep": NAMES_KEEP(depth[0]["keep"]), "removed": ("blk2",)}) <= 0.5 * true_ms({}) * 1.02
    assert res.removed_blocks == ["blk2"] and res.reached
    assert res.chosen["measured_ratio"] <= 0.5


def test_a_challenger_still_over_the_target_never_wins(tmp_path):
    """A device on which any removal costs a fixed extra 30% (no calibration can size that away):
    the depth plan wins the probes but measures over the target, so the uniform plan is kept."""

    class Penalised(DepthStub):
        def device_ms(self, model):
            return super().device_ms(model) + (0.3 * true_ms({}) if model["removed"] else 0.0)

    env = Penalised(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: 0.05 * len(rm))
    cfg = PlanSearchConfig(candidates=2, per_round=2, probe_top=2, ramps=(), shrink_tries=0, challenger_tries=0, seed=0)
    res = run(env, tmp_path, config=cfg)
    state = json.loads((tmp_path / "state" / "plan_state.json").read_text())
    assert state["decision"]["candidate_reached"] is False and "over the target" in state["decision"]["why"]
    assert res.fallback_to_uniform and res.removed_blocks == [] and res.reached


def NAMES_KEEP(keep):  # noqa: N802 - record keep list -> keep dict
    return dict(zip(NAMES, keep, strict=True))


class ThreeBlockStub(DepthStub):
    """Three removable blocks that each save 0.3 ms as predicted; the device shows half of it."""

    blocks = ["blk1", "blk2", "blk3"]
    block_influence = {"blk1": 0.3, "blk2": 0.1, "blk3": 0.2}  # blk2, then blk3, then blk1

    def _ms(self, keep, removed=()):
        return true_ms(keep) - 0.3 * len(removed)

    def device_ms(self, model):
        return true_ms(model["keep"]) - self.share * 0.3 * len(model["removed"])


def test_depth_sets_grow_when_the_measured_saving_is_smaller_than_predicted(tmp_path):
    """Uncalibrated, removing two blocks at full width is predicted within the 0.5x goal, so the sets
    stop there; measured, a removal saves half, so a third set is proposed, calibrated the same way
    and screened; a resumed run replays the same growth."""

    def make():
        return ThreeBlockStub(lambda k: 0.5 + 0.4 * kept_fraction(k), lambda rm: -0.01 * len(rm), share=0.5)

    cfg = PlanSearchConfig(candidates=12, per_round=6, probe_top=2, ramps=(), depth_plans=4, seed=0)
    res = run(make(), tmp_path / "a", config=cfg)
    cal = json.loads((tmp_path / "a" / "state" / "plan_state.json").read_text())["depth_calibration"]
    assert [[p["removed"] for p in c["plans"]] for c in cal] == [
        [["blk2"], ["blk2", "blk3"]], [["blk2"], ["blk2", "blk3"]], [["blk1", "blk2", "blk3"]]]
    # the first two sets read off their prediction (a removal saves half) and were read again; the
    # grown set, sized with the largest set's measured share, read within `depth_recheck`: once
    third = cal[2]["plans"][0]
    assert abs(third["ratio"] / cal[2]["uniform_ratio"] / (third["pred_ms"] / cal[2]["uniform_pred_ms"]) - 1.0) <= 0.08
    depth = [r["removed"] for r in res.records if r.get("kind", "").startswith("depth")]
    assert depth == [["blk2"], ["blk2", "blk3"], ["blk1", "blk2", "blk3"]]
    capped = run(make(), tmp_path / "c", config=PlanSearchConfig(candidates=6, per_round=6, probe_top=2, ramps=(),
                                                                 depth_plans=2, seed=0))
    assert max(len(r.get("removed") or ()) for r in capped.records) == 2  # `--depth-plans` still caps the sets
    assert run(make(), tmp_path / "b", config=cfg, stop_after=1) is None
    resumed = run(make(), tmp_path / "b", config=cfg, resume=True)
    assert [r["keep"] for r in resumed.records] == [r["keep"] for r in res.records]
    assert resumed.removed_blocks == res.removed_blocks


def test_off_prediction_picks_the_sets_read_off_their_predicted_latency():
    """Only sets whose reading relative to uniform is off the predicted one by more than the
    tolerance are read again; tolerance 0 reads every set again."""
    from rlprune_edge.search.depth import off_prediction

    entry = {"uniform_ratio": 0.5, "uniform_pred_ms": 1.0, "plans": [
        {"removed": ["b"], "pred_ms": 0.9, "ratio": 0.5 * 0.93},  # 0.93 read for 0.90 predicted: 3% off
        {"removed": ["c", "a"], "pred_ms": 0.9, "ratio": 0.5 * 1.05},  # 17% off
    ]}
    assert off_prediction(entry, 0.08) == {("a", "c")}
    assert off_prediction(entry, 0.0) == {("b",), ("a", "c")}
