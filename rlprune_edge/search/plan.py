"""Whole pruning plans: the search space of the default search, with bounds, followers and sizing.

A *plan* gives every prunable group a keep count. The search does not move step by step; it
proposes whole plans, each pruned one-shot from the dense model. A plan is written as a vector of
log keep-preferences ``prefs`` (one per free group) and one global ``scale``::

    keep_g = clamp(round_to_multiple(channels_g * min(1, scale * exp(prefs_g))), min_keep_g, channels_g)

``prefs = 0`` is the uniform plan (every group keeps the same fraction). ``size_to_latency`` bisects
the scale so that the plan's *predicted* latency meets the goal with as many channels as possible
(AMC's clipped action, NetAdapt's equal-latency proposals), so plans compete on accuracy at equal
predicted latency. ``size_to_channels`` does the same for a channel (sparsity) budget.

Bounds: every group keeps at least ``max(multiple, ceil(min_fraction * channels))`` rounded up to
the multiple. *Followers* (squeeze-excitation reducers and other layers that only run on a pooled
1×1 map) take the keep fraction of the group that feeds them instead of a preference of their own:
they cost almost no latency, so a latency-driven search would otherwise strip them for free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MIN_FRACTION = 0.1


def _round_to(x: float, m: int) -> int:
    """Nearest multiple of m (halves up)."""
    return int(math.floor(x / m + 0.5)) * m


@dataclass(frozen=True)
class PlanSpace:
    """Groups, their bounds and followers; turns (prefs, scale) into keep counts."""

    names: tuple[str, ...]
    channels: tuple[int, ...]
    prunable: tuple[bool, ...]
    min_keep: tuple[int, ...]
    multiple: int
    followers: dict[int, int] = field(default_factory=dict)  # follower index -> producer index

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        channels: Sequence[int],
        prunable: Sequence[bool],
        multiple: int = 1,
        min_fraction: float = DEFAULT_MIN_FRACTION,
        followers: dict[str, str] | None = None,
    ) -> PlanSpace:
        """Bounds from the channel multiple and `min_fraction`; `followers` maps group → producer group."""
        m = max(1, int(multiple))
        lows = []
        for c, p in zip(channels, prunable, strict=True):
            c = int(c)
            if not p or c <= m:
                lows.append(c)
                continue
            low = max(m, int(math.ceil(min_fraction * c / m - 1e-9)) * m)
            lows.append(min(c, low))
        index = {n: i for i, n in enumerate(names)}
        fol = {}
        for f, prod in (followers or {}).items():
            if f in index and prod in index and prunable[index[f]] and prunable[index[prod]] and f != prod:
                fol[index[f]] = index[prod]
        return cls(tuple(names), tuple(int(c) for c in channels), tuple(bool(p) for p in prunable), tuple(lows), m, fol)

    # --- coordinates -----------------------------------------------------------------------------
    @property
    def free(self) -> list[int]:
        """Indices of the groups a plan chooses for (prunable, not followers, can shrink)."""
        return [i for i, (p, c, lo) in enumerate(zip(self.prunable, self.channels, self.min_keep, strict=True))
                if p and lo < c and i not in self.followers]

    @property
    def dim(self) -> int:
        return len(self.free)

    def uniform_prefs(self) -> np.ndarray:
        return np.zeros(self.dim)

    def ramp_prefs(self, slope: float) -> np.ndarray:
        """Structured preferences over depth: log keep-preferences falling (``slope < 0``: later groups
        narrower than uniform, earlier ones wider) or rising linearly from the first free group to the
        last, spread ``|slope|`` in all, centred. Free groups are in graph order (input to output)."""
        if self.dim < 2:
            return np.zeros(self.dim)
        v = float(slope) * np.linspace(-0.5, 0.5, self.dim)
        return v - v.mean()

    def full_keep(self) -> list[int]:
        return list(self.channels)

    def floor_keep(self) -> list[int]:
        """The smallest plan within the bounds (every group at its minimum)."""
        return list(self.min_keep)

    def as_dict(self, keep: Sequence[int]) -> dict[str, int]:
        """{group: keep} for prunable groups (what ``prune`` and the latency model take)."""
        return {n: int(k) for n, k, p in zip(self.names, keep, self.prunable, strict=True) if p}

    # --- plans -----------------------------------------------------------------------------------
    def keep_at(self, prefs: np.ndarray, scale: float) -> list[int]:
        """Keep counts of the plan `prefs` at global `scale` (monotone non-decreasing in scale)."""
        keep = list(self.channels)
        m = self.multiple
        for j, i in enumerate(self.free):
            c = self.channels[i]
            frac = min(1.0, scale * math.exp(float(prefs[j])))
            keep[i] = int(min(c, max(self.min_keep[i], _round_to(frac * c, m))))
        return self.with_followers(keep)

    def with_followers(self, keep: Sequence[int]) -> list[int]:
        """`keep` with every follower group at its producer's kept fraction (within its bounds)."""
        keep = list(keep)
        for f, prod in self.followers.items():
            c = self.channels[f]
            frac = keep[prod] / self.channels[prod]
            keep[f] = int(min(c, max(self.min_keep[f], _round_to(frac * c, self.multiple))))
        return keep

    def _scale_range(self, prefs: np.ndarray) -> tuple[float, float]:
        """(scale at which every free group is at its minimum, scale at which every group is whole)."""
        if self.dim == 0:
            return 1.0, 1.0
        e = np.exp(np.asarray(prefs, dtype=np.float64))
        lo = min(0.5 * self.multiple / self.channels[i] / e[j] for j, i in enumerate(self.free))
        hi = max(1.0 / e[j] for j in range(self.dim))
        return max(lo, 1e-9), max(hi, lo * 2)

    def _largest_scale(self, prefs: np.ndarray, fits: Callable[[list[int]], bool], iterations: int = 48) -> float | None:
        """Largest scale whose plan `fits` (bisection in log scale); None when even the floor does not."""
        lo, hi = self._scale_range(prefs)
        if fits(self.keep_at(prefs, hi)):
            return hi
        if not fits(self.keep_at(prefs, lo)):
            return None
        a, b = math.log(lo), math.log(hi)
        for _ in range(iterations):
            mid = 0.5 * (a + b)
            if fits(self.keep_at(prefs, math.exp(mid))):
                a = mid
            else:
                b = mid
        return math.exp(a)

    def size_to_latency(self, prefs: np.ndarray, predict_ms: Callable[[list[int]], float], goal_ms: float) -> tuple[list[int], float]:
        """(keep, scale): the plan along `prefs` with the most channels whose predicted latency ≤ goal.

        When no scale fits, returns the smallest plan along `prefs` (the caller checks reachability).
        """
        scale = self._largest_scale(prefs, lambda k: predict_ms(k) <= goal_ms)
        if scale is None:
            lo, _ = self._scale_range(prefs)
            return self.keep_at(prefs, lo), lo
        return self.keep_at(prefs, scale), scale

    def fill(self, prefs: np.ndarray, scale: float, keep: Sequence[int], predict_ms: Callable[[list[int]], float],
             goal_ms: float) -> tuple[list[int], np.ndarray]:
        """Spend what rounding left of the goal → (keep, prefs): free groups grow one multiple at a
        time, those rounded down furthest from their share first (largest remainder), in passes while
        any still fits under `goal_ms`. The returned `prefs` give the filled plan at `scale` again
        (``keep_at(prefs, scale) == keep``: a grown group's preference is set to its new fraction),
        so re-sizing and the distribution work on the plan as filled. Why: on a coarse channel grid
        the one-scale plan stops where its next step overshoots, and a challenger that keeps less
        predicted latency than the uniform plan competes on accuracy at a handicap (ResNet-20 at
        multiple 16: 11 challengers at 0.82–1.00×, mean 0.92×, of uniform's predicted latency)."""
        keep, new_prefs, m = list(keep), np.array(prefs, dtype=np.float64), self.multiple
        remainder = {j: min(1.0, scale * math.exp(float(prefs[j]))) * self.channels[i] - keep[i]
                     for j, i in enumerate(self.free)}
        order = sorted(remainder, key=lambda j: -remainder[j])
        grown = set()
        changed = True
        while changed:
            changed = False
            for j in order:
                i = self.free[j]
                if keep[i] >= self.channels[i]:
                    continue
                trial = list(keep)
                trial[i] = min(self.channels[i], keep[i] + m)
                trial = self.with_followers(trial)
                if predict_ms(trial) <= goal_ms:
                    keep, changed = trial, True
                    grown.add(j)
        for j in grown:
            i = self.free[j]
            new_prefs[j] = math.log(keep[i] / (self.channels[i] * scale))
        return keep, new_prefs

    def size_to_channels(self, prefs: np.ndarray, keep_total: int) -> tuple[list[int], float]:
        """(keep, scale): the plan along `prefs` keeping at most `keep_total` prunable channels (most such)."""
        def kept(k: list[int]) -> int:
            return sum(v for v, p in zip(k, self.prunable, strict=True) if p)

        scale = self._largest_scale(prefs, lambda k: kept(k) <= keep_total)
        if scale is None:
            lo, _ = self._scale_range(prefs)
            return self.keep_at(prefs, lo), lo
        return self.keep_at(prefs, scale), scale

    def _step(self, prefs: np.ndarray, scale: float, factor: float) -> tuple[list[int], float]:
        """The nearest different plan along `prefs` moving the scale by `factor` per try, or the same at the end."""
        now = self.keep_at(prefs, scale)
        lo, hi = self._scale_range(prefs)
        s = scale
        while lo < s < hi or (s == scale and lo <= s <= hi):
            s *= factor
            k = self.keep_at(prefs, s)
            if k != now:
                return k, s
        return now, scale

    def between(self, prefs: np.ndarray, low_scale: float, high_scale: float,
                iterations: int = 60) -> tuple[list[int], float] | None:
        """A plan along `prefs` strictly between the plans at `low_scale` and `high_scale`, or None.

        Bisects the scale arithmetically (kept channels, and so latency, grow about linearly with
        it; the floor's scale is tiny, so a geometric midpoint from it is usually still the floor)
        and, when the midpoint's plan is one end's, keeps the half that holds the other end.
        """
        a, b = float(low_scale), float(high_scale)
        lo_keep, hi_keep = self.keep_at(prefs, low_scale), self.keep_at(prefs, high_scale)
        for _ in range(iterations):
            mid = 0.5 * (a + b)
            k = self.keep_at(prefs, mid)
            if k == lo_keep:
                a = mid
            elif k == hi_keep:
                b = mid
            else:
                return k, mid
        return None

    def grow(self, prefs: np.ndarray, scale: float) -> tuple[list[int], float]:
        """The next larger plan along `prefs` (at least one group one multiple wider), or the same when whole."""
        return self._step(prefs, scale, 1.01)

    def shrink(self, prefs: np.ndarray, scale: float) -> tuple[list[int], float]:
        """The next smaller plan along `prefs` (at least one group one multiple smaller), or the same at the floor."""
        return self._step(prefs, scale, 0.99)

def follower_groups(model: object, example_inputs: object, groups: Sequence[object]) -> dict[str, str]:
    """{follower group: producer group} for groups whose own layer runs on a pooled 1×1 map.

    Squeeze-excitation reducers are the case in point: their conv sees a globally pooled vector,
    costs next to nothing, and exists to model the producer's channels, so it keeps the producer's
    fraction. The producer is the group whose channels the follower's layer consumes.
    """
    import torch

    from rlprune_edge.graph import IN
    from rlprune_edge.layers import handler_for

    model = model  # type: ignore[assignment]
    spatial: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, mod in model.named_modules():  # type: ignore[attr-defined]
        if getattr(handler_for(mod), "spatial", False):  # a conv: records the spatial size it sees
            hooks.append(mod.register_forward_hook(
                lambda _m, inp, _o, name=name: spatial.__setitem__(name, tuple(inp[0].shape[2:]))))
    try:
        with torch.no_grad():
            was = model.training  # type: ignore[attr-defined]
            model.eval()  # type: ignore[attr-defined]
            model(example_inputs)  # type: ignore[operator]
            model.train(was)  # type: ignore[attr-defined]
    finally:
        for h in hooks:
            h.remove()
    in_spatial = tuple(example_inputs.shape[2:])  # type: ignore[attr-defined]
    consumers: dict[str, str] = {}  # module -> group whose channels it takes as input
    for g in groups:
        if getattr(g, "prunable", False):
            for mod, kind in getattr(g, "members", []):
                if kind == IN:
                    consumers.setdefault(mod, g.name)
    out = {}
    for g in groups:
        if not getattr(g, "prunable", False):
            continue
        shape = spatial.get(g.name)
        if shape is None or in_spatial == shape or any(s != 1 for s in shape):
            continue
        prod = consumers.get(g.name)
        if prod is not None and prod != g.name:
            out[g.name] = prod
    return out
