"""benchmarks/studies/study_plans.py: the analysis that reads challengers against the uniform curve (no training here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_study  # noqa: E402


@pytest.fixture()
def study():
    return load_study("study_plans")


def test_uniform_curve_interpolates_and_is_flat_beyond_its_ends(study):
    pts = [(0.50, 0.92), (0.40, 0.90)]
    assert study._interp_uniform(pts, 0.45) == pytest.approx(0.91)
    assert study._interp_uniform(pts, 0.30) == pytest.approx(0.90)
    assert study._interp_uniform(pts, 0.60) == pytest.approx(0.92)


def test_summary_reads_gains_against_the_curve_and_averages_kd_seeds(study):
    keep_a, keep_b, keep_c = [1], [2], [3]
    doc = {"finalists": [
        {"kind": "uniform", "keep": keep_a, "ratio": 0.45, "test_acc": 0.910, "acc_20": 0.3, "acc_100": 0.8, "acc_400": 0.85, "params": 10},
        {"kind": "uniform", "keep": keep_a, "ratio": 0.45, "test_acc": 0.914, "acc_20": 0.3, "acc_100": 0.8, "acc_400": 0.85, "params": 10},
        {"kind": "uniform+1", "keep": keep_b, "ratio": 0.50, "test_acc": 0.922, "acc_20": 0.4, "acc_100": 0.82, "acc_400": 0.87, "params": 12},
        {"kind": "top-screen", "keep": keep_c, "ratio": 0.475, "test_acc": 0.925, "acc_20": 0.5, "acc_100": 0.81, "acc_400": 0.88, "params": 11},
    ]}
    study._summarise(doc)
    # the curve: (0.45, 0.912) from the two seeds, (0.50, 0.922); at 0.475 it reads 0.917
    assert doc["uniform_curve"] == [pytest.approx((0.45, 0.912)), pytest.approx((0.50, 0.922))]
    assert doc["finalists"][3]["gain_vs_uniform_curve"] == pytest.approx(0.008)
    assert doc["uniform_kd_seed_spread"] == pytest.approx(0.004)
    assert doc["spearman_vs_final"]["acc_400"] == pytest.approx(study._spearman([0.85, 0.85, 0.87, 0.88],
                                                                                 [0.910, 0.914, 0.922, 0.925]))
    assert "gain_vs_uniform_curve" not in doc["finalists"][0]


def test_spearman_gives_ties_their_average_rank(study):
    assert study._ranks([0.5, 0.2, 0.5, 0.9]).tolist() == [1.5, 0.0, 1.5, 3.0]
    assert study._spearman([1, 1, 2], [3, 3, 5]) == pytest.approx(1.0)
    assert study._spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_checkpoint_is_the_benchmarks_one(study):
    from rlprune_edge.checkpoint import default_checkpoint_path

    assert study._checkpoint("vgg19", 0.25) == str(default_checkpoint_path())


def test_enumerate_plans_lists_every_width_combination_once():
    """benchmarks/studies/enumerate_plans.py: every free group at every multiple from its floor to its width
    (the width itself when it is not a multiple), followers at their producer's fraction."""
    from rlprune_edge.search.plan import PlanSpace

    mod = load_study("enumerate_plans")
    space = PlanSpace.build(["stem", "a", "b", "se", "out"], [16, 32, 40, 40, 10], [True, True, True, True, False],
                            multiple=16, followers={"se": "b"})
    plans = mod.enumerate_space(space, max_plans=100)
    # stem is at its floor (16 of 16); a: 16, 32; b: 16, 32, 40
    assert len(plans) == 2 * 3 and len({tuple(p) for p in plans}) == 6
    assert all(p[0] == 16 and p[4] == 10 for p in plans)
    assert {(p[1], p[2]) for p in plans} == {(a, b) for a in (16, 32) for b in (16, 32, 40)}
    assert all(p[3] == p[2] for p in plans)  # the follower keeps its producer's fraction (same width here)
    assert space.floor_keep() in plans and space.full_keep() in plans
    with pytest.raises(SystemExit, match="more than --max-plans"):
        mod.enumerate_space(space, max_plans=5)
