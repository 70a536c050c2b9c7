"""The plan search's measured steps: the latency model calibrated at the goal, the uniform plan
fitted to the target by measurement, a challenger fitted beside it in the same windows.

Mixed into ``plan_search._Search``, whose state these use: ``env``, ``space``, ``target``,
``config``, ``calibration``, ``measurements``, ``uniform_fit``, ``base``, ``goal_ms``,
``predict``, ``size``, ``build``, ``save``, ``log``, ``timed``. Why each step exists:
docs/compress.md ("The uniform plan is fitted first", "The winner is fitted before it is confirmed").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlprune_edge.search.measured_fit import fit_to_target, judged, value_of


class FitPhase:
    """Latency calibration and measured fits of the plan search (see the module docstring)."""

    def calibrate_at_goal(self) -> None:
        """Before any plan is scored, size the uniform plan to the goal, measure it against the dense
        model in the same windows and fit the latency model's savings scale to it; again with the
        re-sized plan, up to ``calibration_tries`` times (fewer once the size stops changing).

        Every candidate is then sized by a model that is right near the goal, not only at the dense
        end: on MobileNetV3 (host-cpu) the uncorrected model sized the uniform plan to 0.52× for a
        0.6× goal, so candidates competed at a latency well under the target. Resumed runs replay
        the recorded measurements.
        """
        if self.target.kind == "sparsity":
            return
        prev = None
        for t in range(self.config.calibration_tries):
            keep, _ = self.size(self.space.uniform_prefs())
            if keep == prev:
                break
            if t < len(self.calibration):
                c = self.calibration[t]
            else:
                with self.timed("measuring"):
                    dense_ms, res = self.env.measure([self.env.build(self.space.as_dict(keep))])
                c = {"keep": keep, "pred_ms": self.predict(keep), "dense_ms": dense_ms, "ms": res[0][0],
                     "ratio": res[0][1]}
                steady = self._steady()
                if steady is not None:
                    c["steady"] = steady
                self.calibration.append(c)
                self.save()
                self.log(f"latency calibration: uniform plan predicted {c['pred_ms'] / self.base.latency_ms:.3f}x, "
                         f"measured {c['ratio']:.3f}x dense (same windows)")
            self.env.rescale(self.space.as_dict(c["keep"]), float(c["ratio"]))
            prev = keep

    def _steady(self) -> dict[str, Any] | None:
        """How many sessions of the last measurement ran at the machine's steady speed (None: no gate)."""
        gate = getattr(self.env, "gate", None)
        if gate is None or not gate.last:
            return None
        return {k: gate.last[k] for k in ("sessions", "steady", "used", "reference_ms")}

    def _measurement(self, keep: list[int], ukeep: list[int] | None, t: int, repeat: bool,
                     removed: Sequence[str] = ()) -> dict[str, Any]:
        """The run's next measurement (`ukeep` in the same windows): replayed when resuming, else measured."""
        idx, self._measured = self._measured, self._measured + 1
        if idx < len(self.measurements):  # resume: never re-measure
            return self.measurements[idx]
        c = self.calibration[-1] if self.calibration else None
        if idx == 0 and ukeep is None and not removed and c is not None and c["keep"] == keep:
            # the uniform fit's first plan is the last one calibrated: that reading (alone, beside
            # dense, the same protocol) is its first
            m = {"try": t, "repeat": repeat, "keep": keep, "dense_ms": c["dense_ms"], "ms": c["ms"], "ratio": c["ratio"],
                 "uniform_ms": c["ms"], "uniform_ratio": c["ratio"], "pred_ms": self.predict(keep), "from_calibration": True}
            if "steady" in c:
                m["steady"] = c["steady"]
            self.measurements.append(m)
            self.save()
            return m
        models = [self.build(keep, removed)]
        alone = ukeep is None or (keep == ukeep and not removed)
        if not alone:
            models.append(self.build(ukeep))  # type: ignore[arg-type]
        with self.timed("measuring"):
            dense_ms, res = self.env.measure(models)
        m = {"try": t, "repeat": repeat, "keep": keep, "dense_ms": dense_ms, "ms": res[0][0], "ratio": res[0][1],
             "uniform_ms": res[-1][0], "uniform_ratio": res[-1][1], "pred_ms": self.predict(keep, removed)}
        if removed:
            m["removed"] = list(removed)
        steady = self._steady()
        if steady is not None:
            m["steady"] = steady
        first = self.measurements[-1] if repeat and self.measurements else None
        if first is not None and self.key_of(first["keep"], first.get("removed", ())) == self.key_of(keep, removed):
            # the decision reads both: their geometric mean (a plan read 0.458x then 0.449x for a 0.45x
            # target is over it, not within it because its second reading was lucky)
            m["single"] = {k: m[k] for k in ("ms", "ratio", "uniform_ms", "uniform_ratio")}
            for k in m["single"]:
                m[k] = math.sqrt(float(first[k]) * m["single"][k])
        self.measurements.append(m)
        self.save()
        again = f" again: {m['single']['ratio']:.3f}x; both readings" if "single" in m else ""
        who = "uniform plan" if alone else f"chosen {m['ratio']:.3f}x dense, uniform"
        st = m.get("steady")
        speed = "" if st is None else f"; {st['steady']}/{st['sessions']} sessions at the steady speed"
        self.log(f"measured{again}: {who} {m['uniform_ratio']:.3f}x (same windows, {m['dense_ms']:.3f} ms dense{speed})")
        return m

    def fit_uniform(self) -> None:
        """Fit the uniform plan to the target by measurement before any plan is scored (what
        `--search uniform` returns); every challenger is then sized to its predicted latency. Why:
        docs/compress.md ("The uniform plan is fitted first")."""
        prefs = self.space.uniform_prefs()
        keep, scale = self.size(prefs)
        if self.target.kind == "sparsity":
            self.uniform_fit = (keep, scale, None)
            return
        self._measured = 0
        self.uniform_fit = self._fit(keep, prefs, scale, None)
        self.save()

    def _fit(self, keep: list[int], prefs: np.ndarray, scale: float,
             ukeep: list[int] | None, removed: Sequence[str] = ()) -> tuple[list[int], float, bool]:
        """Fit a plan to the target by measurement (`ukeep` in the same windows; None: alone)."""
        goal = None if self.target.kind == "ratio" else float(self.goal_ms)
        ref = None if ukeep is None else self._uniform_reading(ukeep)
        return fit_to_target(
            self.space, self.target, prefs, keep, scale, goal,
            measure=lambda k, t, repeat: judged(self._measurement(k, ukeep, t, repeat, removed), ref, self.target.kind),
            # the model learns the error of the search's own (removal-calibrated) prediction, stated
            # for the same widths with every block kept
            correct=lambda k, ms: self.env.correct(self.space.as_dict(k), ms * self.predict(k) / self.predict(k, removed)),
            predict=lambda k: self.predict(k, removed),
            tries=self.config.shrink_tries if ukeep is None else self.config.challenger_tries,
            grow_slack=self.config.grow_slack, grow_past_slack=ukeep is None,
            stop_level=None if ref is None else value_of(self.target, ref),
            fit_recheck=self.config.fit_recheck, secant=ukeep is not None)

    def _uniform_reading(self, ukeep: list[int]) -> dict[str, Any] | None:
        """The uniform plan's own reading when it was fitted (the last one of those widths measured alone)."""
        return next((m for m in reversed(self.measurements) if m["keep"] == ukeep and not m.get("removed")
                     and m["ms"] == m["uniform_ms"]), None)
