"""tools/gain_ci.py (python -m tools.gain_ci): the paired statistics of a benchmark cell's gain, on constructed correctness arrays."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_tool  # noqa: E402


@pytest.fixture(scope="module")
def tool():
    return load_tool("gain_ci")


def _pair(n: int, wins: int, losses: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of plan and baseline on n images: plan right alone on `wins`, baseline alone on `losses`."""
    rng = np.random.default_rng(seed)
    base = (rng.random(n) < 0.9).astype(np.int8)
    plan = base.copy()
    idx = rng.permutation(n)
    plan[idx[:wins]], base[idx[:wins]] = 1, 0
    plan[idx[wins:wins + losses]], base[idx[wins:wins + losses]] = 0, 1
    return plan, base


def test_gains_and_standard_errors_follow_the_differences(tool):
    p0, b0 = _pair(1000, 30, 10, 0)  # +2.0 points
    p1, b1 = _pair(1000, 10, 20, 1)  # -1.0 point
    r = tool.paired_gain_stats(np.stack([p0, p1]), np.stack([b0, b1]))
    assert r["gain_per_seed"] == pytest.approx([2.0, -1.0])
    assert r["mean_gain"] == pytest.approx(0.5)
    d0 = p0.astype(float) - b0
    assert r["se_per_seed"][0] == pytest.approx(100 * d0.std(ddof=1) / math.sqrt(1000))
    lo, hi = r["test_ci95"]
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(1.96 * r["test_se"])
    assert r["seed_sd"] == pytest.approx(np.std([2.0, -1.0], ddof=1))
    assert r["seed_ci95"][1] - 0.5 == pytest.approx(12.706 * r["seed_sd"] / math.sqrt(2))


def test_the_same_test_images_in_every_seed_are_not_counted_as_independent(tool):
    p, b = _pair(2000, 40, 15, 3)
    one = tool.paired_gain_stats(p[None], b[None])
    twice = tool.paired_gain_stats(np.stack([p, p]), np.stack([b, b]))
    assert twice["mean_gain"] == pytest.approx(one["mean_gain"])
    assert twice["test_se"] == pytest.approx(one["test_se"])  # not one["test_se"] / sqrt(2)
    assert twice["seed_sd"] == 0.0


def test_identical_finals_give_zero_and_bad_shapes_are_refused(tool):
    p, _ = _pair(500, 0, 0, 4)
    r = tool.paired_gain_stats(np.stack([p, p, p]), np.stack([p, p, p]))
    assert r["mean_gain"] == 0.0 and r["test_se"] == 0.0 and r["test_ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        tool.paired_gain_stats(np.zeros((2, 10)), np.zeros((3, 10)))


def test_a_cell_whose_finals_are_gone_is_skipped_and_a_missing_results_file_exits_2(tool, tmp_path):
    cells = {f"aggressive/seed{s}": {m: {"test_acc": 0.9} for m in tool.METHODS} for s in range(2)}
    assert tool.cell_stats(tmp_path, "vgg19-w0.25", "aggressive", cells, None, None) is None
    assert tool.main(["--work", str(tmp_path)]) == 2
