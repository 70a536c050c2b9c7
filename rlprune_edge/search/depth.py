"""Depth plans: which blocks a candidate removes whole (``rlprune_edge.blocks``: residual blocks,
plain VGG units).

A width plan alone cannot go below the *floor* (every group at its narrowest), and near it every
group is squeezed. On runtimes where a small CNN's time is mostly per-layer cost, removing a few
residual blocks buys the same latency while the rest of the network keeps its width. The search
therefore also proposes plans that remove the ``d`` least influential blocks (block influence,
ShortGPT; plain units from the output end, ``blocks.removal_priority``) for ``d = s, 2s, ...``
(``s``: the environment's ``depth_step``, 1 for residual blocks), each with its widths sized to the same predicted latency as every
other candidate; the KD screen, the probes and the confirmation against the uniform plan judge them
like any other plan. ``d`` stops at the first count whose full-width model is predicted within the
goal (removing more could only leave budget unused) or at ``limit``. That prediction is re-checked
once the removals are measured: where the device shows less saving than predicted (ONNX Runtime on
MobileNetV3), the sets go on growing, each new one measured the same way (``DepthPhase.grow_depth``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


def depth_plans(blocks: Sequence[str], influence: Mapping[str, float],
                full_width_ms: Callable[[tuple[str, ...]], float], goal_ms: float | None,
                limit: int, step: int = 1) -> list[tuple[str, ...]]:
    """Removal sets to propose, smallest first; each in module order.

    `blocks`: the removable blocks in module order; `influence`: block influence or another removal
    priority (smaller: removed first; ties by module order, later first); `full_width_ms(removed)`:
    predicted latency of the dense widths with `removed` gone; `goal_ms`: None for a sparsity target
    (then ``limit`` sets); `step`: blocks added per set (``step``, ``2 * step``, ...; the last set
    may be all blocks)."""
    if limit <= 0 or not blocks:
        return []
    out: list[tuple[str, ...]] = []
    step = max(1, int(step))
    for d in range(step, len(blocks) + step, step):
        removed = removal_set(blocks, influence, min(d, len(blocks)))
        out.append(removed)
        if len(out) >= limit or (goal_ms is not None and full_width_ms(removed) <= goal_ms):
            break
    return out


def removal_set(blocks: Sequence[str], influence: Mapping[str, float], count: int) -> tuple[str, ...]:
    """The `count` least influential blocks (ties: later first), in module order."""
    pos = {b: i for i, b in enumerate(blocks)}
    order = sorted(blocks, key=lambda b: (float(influence.get(b, 0.0)), -pos[b]))
    return tuple(sorted(order[:count], key=pos.__getitem__))


def describe(removed: Sequence[str]) -> str:
    """A short label for logs and records."""
    return f"depth -{len(removed)} ({', '.join(removed)})" if removed else "width only"


def plan_key(keep: Sequence[int], removed: Sequence[str] | None) -> tuple:
    """One plan's identity: its keep counts and the blocks it removes."""
    return (*keep, *sorted(removed or ()))


def removed_kwargs(removed: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``removed=`` for the environment only when blocks are removed (width-only environments need not know)."""
    return {"removed": tuple(removed)} if removed else {}


def removal_scale(width_ms: float, removed_ms: float, measured_ms: float, low: float = 0.0, high: float = 2.0) -> float:
    """How much of the predicted saving of removing blocks a measurement showed: the scale ``s`` with
    ``measured = width_ms - s * (width_ms - removed_ms)`` (``width_ms``: the same widths with every
    block kept; ``removed_ms``: the latency model's prediction with the blocks gone), clamped to
    [low, high]; 1 when the model predicts no saving.

    Why: the latency model predicts a removal by leaving out the blocks' profiled node times, and on
    a runtime whose profile overcounts small nodes (ONNX Runtime on MobileNetV3: the profiled
    kernels sum to ~1.5x the end-to-end time) that credits a removal with far more than it saves:
    a MobileNetV3 plan removing four blocks, predicted at 0.56x, measured 0.81x dense."""
    saving = width_ms - removed_ms
    if saving <= 1e-12:
        return 1.0
    return float(min(max((width_ms - measured_ms) / saving, low), high))


def off_prediction(entry: Mapping, tolerance: float) -> set[tuple[str, ...]]:
    """The removal sets of one depth-calibration entry whose reading, relative to the uniform plan in
    the same windows, is off their predicted latency relative to it by more than `tolerance`
    (relative; 0: every set). Each was sized to the uniform plan's predicted latency, so the
    prediction is close to 1. One reading fits the set's removal scale; the plan re-sized with it
    still reads slower than predicted (on the shipped VGG-19, 15 of 17 recorded second readings, by
    +4% on average and up to +14% for the largest sets), so a set read off by more than the noise
    (the same depth plan read 0.995x and 0.950x of uniform a minute apart) is read again."""
    out = set()
    for p in entry["plans"]:
        predicted = p["pred_ms"] / entry["uniform_pred_ms"]
        measured = p["ratio"] / entry["uniform_ratio"]
        if tolerance <= 0 or abs(measured / predicted - 1.0) > tolerance:
            out.add(tuple(sorted(p["removed"])))
    return out


class DepthPhase:
    """The plan search's depth-plan steps (mixed into ``plan_search._Search``, whose state they use:
    ``env``, ``space``, ``target``, ``config``, ``uniform_fit``, ``depth``, ``depth_calibration``,
    ``removal_scales``, ``predict``, ``size``, ``build``, ``save``, ``log``)."""

    def depth_step(self) -> int:
        """Blocks added per removal set: the environment's ``depth_step`` (1 when it has none)."""
        return max(1, int(getattr(self.env, "depth_step", 1) or 1))

    def canonical(self, keep: Sequence[int], removed: Sequence[str] = ()) -> list[int]:
        """`keep` with the counts that `removed` makes meaningless set as the environment reads them
        (``canonical_keep``: a removed plain unit's own group), so one model has one key."""
        fix = getattr(self.env, "canonical_keep", None)
        if not removed or fix is None:
            return list(keep)
        full = dict(zip(self.space.names, keep, strict=True))
        full.update(fix(self.space.as_dict(keep), tuple(removed)))
        return [int(full[n]) for n in self.space.names]

    def key_of(self, keep: Sequence[int], removed: Sequence[str] | None = ()) -> tuple:
        """``plan_key`` of the canonical keep counts."""
        return plan_key(self.canonical(keep, removed or ()), removed)

    def removal_order(self) -> dict[str, float]:
        """The environment's order of removal (lower first): ``removal_priority`` where it has one
        (``blocks.removal_priority``), else its block influence."""
        return dict(getattr(self.env, "removal_priority", None) or getattr(self.env, "block_influence", {}) or {})

    def depth_sets(self) -> list[tuple[str, ...]]:
        """Round 0's removal sets (search.depth), fixed once the latency model is calibrated."""
        if self.depth is None:
            blocks = list(getattr(self.env, "blocks", []) or [])
            goal = None if self.target.kind == "sparsity" else self.size_goal()
            self.depth = depth_plans(blocks, self.removal_order(),
                                     lambda rm: self.predict(self.space.full_keep(), rm), goal,
                                     0 if self.config.uniform_only else self.config.depth_plans, self.depth_step())
        return self.depth

    def calibrate_depth(self) -> None:
        """Measure the depth plans, sized to the goal, beside the fitted uniform plan in the same
        windows and fit each removal set's savings scale (``depth.removal_scale``); the sets whose
        reading was off the prediction by more than ``config.depth_recheck`` are re-sized and
        measured once more (``off_prediction``). Then, while the largest set's calibrated full-width
        prediction is still over the goal, one more block is removed and that set calibrated the
        same way (``grow_depth``)."""
        sets = self.depth_sets()
        if self.target.kind == "sparsity" or not sets or self.uniform_fit is None:
            return
        done = 0  # calibration entries used (measured now or replayed on resume)
        pending = list(sets)
        while pending:
            self._calibrate_round(pending, done)
            done += 1
            off = off_prediction(self.depth_calibration[done - 1], self.config.depth_recheck)
            if off:
                self._calibrate_round([s for s in pending if tuple(sorted(s)) in off], done)
                done += 1
            pending = self.grow_depth()

    def grow_depth(self) -> list[tuple[str, ...]]:
        """One more removal set when the calibrated prediction says the largest one's dense widths are
        still over the goal and ``config.depth_plans`` allows it; its scale starts at the largest
        set's measured one. Returns the new set(s) (empty: none)."""
        blocks = list(getattr(self.env, "blocks", []) or [])
        last = self.depth[-1]
        limit = 0 if self.config.uniform_only else self.config.depth_plans
        if len(self.depth) >= min(limit, len(blocks)) or self.predict(self.space.full_keep(), last) <= self.size_goal():
            return []
        if len(last) >= len(blocks):
            return []
        new = removal_set(blocks, self.removal_order(), min(len(last) + self.depth_step(), len(blocks)))
        self.removal_scales[tuple(sorted(new))] = self.removal_scales.get(tuple(sorted(last)), 1.0)  # keyed as predict() looks up
        self.depth.append(new)
        self.log(f"depth: {len(last)} blocks removed at full width still predicted over the goal after "
                 f"calibration; also proposing {describe(new)}")
        return [new]

    def _calibrate_round(self, sets: list[tuple[str, ...]], index: int) -> None:
        """Calibration entry `index` (measured unless replayed): `sets` sized to the goal, measured with the uniform plan."""
        ukeep = list(self.uniform_fit[0])
        plans = [(self.size(self.space.uniform_prefs(), rm)[0], rm) for rm in sets]
        if index < len(self.depth_calibration):
            c = self.depth_calibration[index]
        else:
            with self.timed("measuring"):
                _, res = self.env.measure([self.build(ukeep)] + [self.build(k, rm) for k, rm in plans])
            c = {"uniform_ratio": res[0][1], "uniform_pred_ms": self.predict(ukeep), "plans": [
                {"removed": list(rm), "keep": k, "pred_ms": self.predict(k, rm), "ratio": r[1]}
                for (k, rm), r in zip(plans, res[1:], strict=True)]}
            self.depth_calibration.append(c)
            self.save()
            self.log("depth calibration: " + "; ".join(f"-{len(p['removed'])} blocks predicted "
                     f"{p['pred_ms'] / self.predict(ukeep):.3f}x uniform, measured {p['ratio'] / c['uniform_ratio']:.3f}x"
                     for p in c["plans"]))
        for p in c["plans"]:
            k, rm = p["keep"], tuple(sorted(p["removed"]))
            target_ms = p["ratio"] / c["uniform_ratio"] * self.predict(ukeep)
            self.removal_scales[rm] = removal_scale(self.predict(k), float(self.env.predict_ms(
                self.space.as_dict(k), **removed_kwargs(rm))), target_ms)
