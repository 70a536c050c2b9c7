"""benchmarks/studies/uniform_multiples.py: the floor and the distinct uniform plans of a channel multiple (no timing here)."""

from __future__ import annotations

import sys
from pathlib import Path

from rlprune_edge.search.plan import PlanSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import load_study  # noqa: E402


def _tool():
    return load_study("uniform_multiples")


def test_floor_first_then_distinct_uniform_plans_on_the_multiple():
    names, channels = ["a", "b", "c", "fc"], [16, 32, 128, 10]
    for m in (8, 16):
        space = PlanSpace.build(names, channels, [True, True, True, False], m, 0.1)
        plans = _tool().uniform_plans(space, m)
        labels, keeps = list(plans), list(plans.values())
        assert labels[0] == f"floor m{m}" and keeps[0] == space.floor_keep()
        assert len({tuple(k) for k in keeps}) == len(keeps) > 2  # each plan once
        for keep in keeps:
            assert keep[3] == 10 and all(k % m == 0 and k <= c for k, c in zip(keep[:3], channels, strict=False))
    m8 = _tool().uniform_plans(PlanSpace.build(names, channels, [True, True, True, False], 8, 0.1), 8)
    assert any(k[0] == 8 for k in m8.values())  # at 8 the 16-channel group can be halved; at 16 it cannot
