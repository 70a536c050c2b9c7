"""Fitting one plan to the latency target by measurement, from both sides.

The latency model sizes plans; the device has the last word. A plan family (fixed preferences,
moving global scale, :class:`rlprune_edge.search.plan.PlanSpace`) is measured, and re-sized until
the largest plan measured within the target is found or the tries run out. Used by the plan search
for the uniform plan (before the search) and for the re-ranked best plan (before its confirmation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rlprune_edge.search.plan import PlanSpace

# (scale, keep, measured value) of one measured plan
Reading = tuple[float, list[int], float]


def met(target: Any, ms: float, ratio: float) -> bool:
    """Whether a measurement is within a latency target (ratio to dense, or ms)."""
    return ratio <= target.value if target.kind == "ratio" else ms <= target.value


def value_of(target: Any, m: dict[str, Any]) -> float:
    """A reading in the target's unit (ratio to dense, or ms)."""
    return float(m["ratio"] if target.kind == "ratio" else m["ms"])


def judged(m: dict[str, Any], ref: dict[str, Any] | None, kind: str = "ms") -> dict[str, Any]:
    """A challenger's reading as the fit judges it: its reading relative to the uniform plan in the
    same windows times the uniform plan's fitted reading (`ref`), so a window that flatters both (one
    read the uniform plan at 0.508x, fitted at 0.597x, and passed a MobileNetV3 depth plan at 0.553x
    that read 0.617x in common windows) fits nothing; when the challenger read slower than the
    uniform plan, its own reading too if that is larger. A challenger no slower than the uniform plan
    in the same windows therefore fits wherever the uniform plan did: a slow window slows both, and
    the uniform plan is what the search returns otherwise (a MobileNetV3 plan read 0.998x of uniform,
    +1.65 points on the confirmation split, and was dropped because both read 0.615x for a 0.6x target).
    For a ratio target (`kind`) the judged ms is the judged ratio times this window's dense time, the
    scale on which the fit corrects the latency model and sets the next goal. The stored measurement
    is unchanged; its own reading is kept under ``"own"`` (a fit whose own reading is over the
    target is read again, :func:`is_near`)."""
    if ref is None or m["uniform_ms"] <= 0 or m["uniform_ratio"] <= 0:
        return m
    slower = m["ratio"] > m["uniform_ratio"]
    relative = m["ratio"] / m["uniform_ratio"] * ref["ratio"]
    ratio = max(m["ratio"], relative) if slower else relative
    ms = ratio * m["dense_ms"] if kind == "ratio" else m["ms"] / m["uniform_ms"] * ref["ms"]
    return {**m, "ms": max(m["ms"], ms) if slower else ms, "ratio": ratio, "own": {"ms": m["ms"], "ratio": m["ratio"]}}


def is_near(target: Any, m: dict[str, Any], recheck: float, fit_recheck: float) -> bool:
    """Whether a first reading is close enough to the target to be read again: a miss at most
    `recheck` over it, a fit at most `fit_recheck` under it, or a fit judged by its reading relative
    to the uniform plan while its own reading (``m["own"]``, :func:`judged`) is over the target."""
    value = value_of(target, m)
    if not met(target, m["ms"], m["ratio"]):
        return value <= (1.0 + recheck) * target.value
    own = m.get("own", m)
    return value >= (1.0 - fit_recheck) * target.value or not met(target, own["ms"], own["ratio"])


def fit_to_target(
    space: PlanSpace, target: Any, prefs: np.ndarray, keep: list[int], scale: float, goal_ms: float | None, *,
    measure: Callable[[list[int], int, bool], dict[str, Any]],
    correct: Callable[[list[int], float], None],
    predict: Callable[[list[int]], float],
    tries: int, grow_slack: float, recheck: float = 0.10, grow_past_slack: bool = True,
    stop_level: float | None = None, fit_recheck: float = 0.0, secant: bool = False,
) -> tuple[list[int], float, bool]:
    """Measure the plan `keep` (at `scale` along `prefs`) and fit it to the target → (keep, scale, reached).

    `measure(keep, try, repeat)` returns a reading ({"ms", "ratio", "dense_ms"}; with ``repeat`` the
    caller combines it with the previous reading of the same plan); `correct(keep, ms)` teaches the
    latency model a measurement; `goal_ms` is the goal of a target in ms (None for a ratio target,
    whose goal moves with each window's dense time).

    A plan over the target is shrunk (latency model corrected by the measurement, re-sized along
    the same preferences, at least one step smaller); one under it is grown the same way and kept
    only if it measures within the target, even when it is within `grow_slack` of the target but
    no larger plan has been measured yet (latency steps in plateaus: a MobileNetV3 uniform plan of
    80k parameters read 0.584x for a 0.6x target and stopped there, while another run of the same
    family grew to 99k, which read 0.588x; in common windows the two read 0.576x and 0.575x, and
    the larger ended 0.27 points higher); between a fit and a miss the next plan is interpolated.
    A near miss (at most `recheck` over the target, relative) is measured again and judged on both
    readings (one read 0.49–0.52× for a plan that read 0.34–0.43× a minute later, on the shipped
    VGG-19, before readings were taken at the steady speed); a clear miss is not, since steady
    readings of one plan vary by a few percent. A near fit is read again too (:func:`is_near`): the
    plan the fit keeps is the one the run returns, and one reading in a noisy spell is not enough.
    With ``grow_past_slack=False`` (a challenger, sized to the fitted uniform plan's predicted
    latency) a fit within `grow_slack` ends the fit at once: growing it would buy it budget the
    uniform plan did not get. `stop_level` (a challenger: the uniform plan's fitted reading, in the
    target's unit) moves that slack's reference from the target down to it when lower. With `secant`
    (a challenger) a one-sided re-sizing scales this plan's own prediction by its reading, to
    ``predict(keep) · 0.99 · level / reading``, instead of half-correcting the shared latency model:
    a challenger that reads slower than predicted is a plan the model underrates. The readings
    behind each rule: docs/compress.md ("The uniform plan is fitted first", "The winner is fitted
    before it is confirmed").
    """
    level = target.value if stop_level is None else min(target.value, stop_level)
    fits: Reading | None = None  # the largest plan measured within the target
    misses: Reading | None = None  # the smallest plan measured over it
    for t in range(tries + 1):
        m = measure(keep, t, False)
        if is_near(target, m, recheck, fit_recheck):
            m = measure(keep, t, True)  # a near miss or a near fit: judged on both readings
        ok = met(target, m["ms"], m["ratio"])
        value = value_of(target, m)
        if ok:
            if fits is None or sum(keep) > sum(fits[1]):
                fits = (scale, list(keep), value)
            if 1.0 - value / level <= grow_slack and (misses is not None or not grow_past_slack):
                break  # close under the target, and the next larger plan measured over it (or not needed)
        elif misses is None or sum(keep) < sum(misses[1]):
            misses = (scale, list(keep), value)
        if t == tries:
            break
        if fits is not None and misses is not None:  # bracketed: a plan strictly between them
            found = between(space, target, prefs, fits, misses)
            if found is None:
                break
            new, new_scale = found
        else:  # one-sided
            if secant:  # a challenger: its own prediction scaled by its reading
                new, new_scale = space.size_to_latency(prefs, predict, predict(keep) * 0.99 * level / value)
            else:  # the latency model learns from the measurement, the goal moves to this window
                correct(keep, float(m["ms"]))
                goal = target.value * float(m["dense_ms"]) if goal_ms is None else goal_ms
                new, new_scale = space.size_to_latency(prefs, predict, goal)
            if not ok and sum(new) >= sum(keep):
                new, new_scale = space.shrink(prefs, scale)
            elif ok and sum(new) <= sum(keep):  # the half-corrected model is still pessimistic: one step up
                new, new_scale = space.grow(prefs, scale)
            if new == keep:
                break  # at the floor (or whole) along this plan
        keep, scale = new, new_scale
    if fits is not None:
        return fits[1], fits[0], True
    return keep, scale, False


def between(space: PlanSpace, target: Any, prefs: np.ndarray, fits: Reading,
            misses: Reading) -> tuple[list[int], float] | None:
    """The next plan to measure between a fitting and a missing one: the scale interpolated
    linearly to just under the target from the two measurements (latency is close to linear in
    the scale between neighbours), else any plan strictly between; None when they are adjacent."""
    goal = 0.99 * target.value
    (s_f, k_f, v_f), (s_m, k_m, v_m) = fits, misses
    if v_m > v_f:
        s = s_f + (goal - v_f) / (v_m - v_f) * (s_m - s_f)
        if s_f < s < s_m:
            k = space.keep_at(prefs, s)
            if k not in (k_f, k_m):
                return k, s
    return space.between(prefs, s_f, s_m)
