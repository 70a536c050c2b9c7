"""The default search: whole plans, one-shot from the dense model, compared at equal predicted latency.

RL-Pruner's idea (a distribution over layers, sampled candidates, the distribution moved toward the
best, Taylor pruning, KD) with candidates made and judged so that the result can be trusted:

1. **Candidates are whole plans** (:mod:`rlprune_edge.search.plan`), each pruned one-shot from the
   dense model. The uniform plan is first fitted to the target by measurement (exactly what
   `--search uniform` returns): it is candidate 0 and the starting incumbent, and every other plan
   is sized by the latency model to its predicted latency, so they compete on accuracy alone.
2. **Proxy**: BatchNorm recalibration (EagleEye), then a short KD screen (``screen_batches``, the
   same batches for every plan), accuracy on a selection split of the validation data, KL to the
   dense model as tie-break. The best few and the uniform plan get a longer KD probe and are
   re-ranked (why a KD screen and not BN recalibration alone: docs/compress.md).
3. **Guarantee**: the re-ranked winner (fitted as in 4) and the uniform plan get ``final_batches`` more KD batches
   (other ones), then the winner is compared with the uniform plan on a held-out confirmation
   split; unless it beats uniform by more than one paired standard error, the uniform plan is
   returned (and the report says so).
4. **Measurement**: the re-ranked best is fitted to the target by measurement, beside the fitted
   uniform plan in the same interleaved windows, *before* it is confirmed (over the target it is
   shrunk: latency model corrected by the measurement, then at least one channel-multiple step;
   re-sized, it is pruned afresh and probed again). Nothing is measured after the decision.

The environment (:class:`PlanEnv`, real one in :mod:`rlprune_edge.search.proxy`) builds, scores,
probes and measures; this module only decides. State is written after every round and phase, and a
resumed run replays recorded measurements, so it ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rlprune_edge.config import PlanSearchConfig  # noqa: F401 - re-exported, defined with every default in one place
from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import atomic_write_json
from rlprune_edge.search.depth import DepthPhase, removed_kwargs
from rlprune_edge.search.fit_phase import FitPhase
from rlprune_edge.search.plan import PlanSpace
from rlprune_edge.search.plan_env import PlanEnv, PlanResult, paired_gain, plan_summary
from rlprune_edge.search.policy import PlanDistribution
from rlprune_edge.search.reward import Baseline, RewardWeights, reward

STATE_VERSION = 12  # 12: challengers filled up to the goal; 11: depth plans read again only when off their prediction; 10: depth plans take round-0 slots; 3: latency calibration at the goal; 5: the uniform plan fitted by measurement before the search; 6: ramps; 7: depth plans; 8: depth sets grow, challengers judged against uniform; 9: probes continue the screened models
STATE_FILE = "plan_state.json"


class _Search(DepthPhase, FitPhase):
    """One run of the plan search (holds the state that is checkpointed)."""

    def __init__(self, env: PlanEnv, space: PlanSpace, target: Any, weights: RewardWeights, base: Baseline,
                 config: PlanSearchConfig, state_dir: Path, fingerprint: dict, log: Callable[[str], None]) -> None:
        self.env, self.space, self.target, self.weights, self.base = env, space, target, weights, base
        self.config, self.state_dir, self.log = config, state_dir, log
        self.policy = PlanDistribution(space.dim, config.rounds, config.policy, seed=config.seed)
        self.fp = {"version": STATE_VERSION, "target": asdict(target), "weights": asdict(weights),
                   "config": asdict(config), "groups": [list(space.names), list(space.channels), list(space.min_keep)],
                   **fingerprint}
        self.goal_ms = target.latency_goal_ms(base.latency_ms)
        self.records: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] | None = None
        self.decision: dict[str, Any] | None = None
        self.measurements: list[dict[str, Any]] = []
        self.calibration: list[dict[str, Any]] = []
        self.wall_before = 0.0
        self.start = time.perf_counter()
        self._cache: dict[tuple, int] = {}
        self._held: dict[int, Any] = {}  # record -> its screened model, kept for the probe (not checkpointed)
        self.depth: list[tuple[str, ...]] | None = None  # removal sets of round 0 (after the calibration)
        self.depth_calibration: list[dict[str, Any]] = []  # the depth plans measured beside uniform
        self.removal_scales: dict[tuple[str, ...], float] = {}  # removal set -> measured share of its saving
        self._measured = 0  # measurements taken (or replayed) in this run so far
        self.uniform_fit: tuple[list[int], float, bool | None] | None = None  # (keep, scale, reached)
        self.phase_s: dict[str, float] = {}  # seconds per phase (resumed runs add to them)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the block's wall seconds to `phase` (the report's per-phase search time)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_s[phase] = self.phase_s.get(phase, 0.0) + time.perf_counter() - t0

    # --- state -------------------------------------------------------------------------------------
    def save(self) -> None:
        atomic_write_json(self.state_dir / STATE_FILE, {
            "fingerprint": self.fp, "policy": self.policy.state_dict(), "records": self.records,
            "rounds": self.rounds, "probes": self.probes, "decision": self.decision,
            "measurements": self.measurements, "calibration": self.calibration, "depth_calibration": self.depth_calibration,
            "wall_s": self.wall_before + time.perf_counter() - self.start, "phase_s": self.phase_s,
            "base": asdict(self.base),
        })

    def load(self) -> None:
        path = self.state_dir / STATE_FILE
        if not path.exists():
            raise UserError(f"no plan-search state in {self.state_dir} to resume; start without resuming.")
        state = json.loads(path.read_text())
        if state.get("fingerprint") != json.loads(json.dumps(self.fp)):
            raise UserError(f"the search in {self.state_dir} was started with different settings (model, data, "
                            "profile, target, reward, bounds or seed); rerun with the same settings or start afresh.")
        self.policy.load_state_dict(state["policy"])
        self.records, self.rounds = state["records"], state["rounds"]
        self.probes, self.decision = state["probes"], state["decision"]
        self.measurements = state["measurements"]
        self.calibration = state.get("calibration", [])
        self.depth_calibration = state.get("depth_calibration", [])
        self.wall_before = float(state["wall_s"])
        self.phase_s = {k: float(v) for k, v in state.get("phase_s", {}).items()}
        self.base = Baseline(**state["base"])  # the first run's dense measurement: the same goal again
        self.goal_ms = self.target.latency_goal_ms(self.base.latency_ms)
        self._cache = {self.key_of(r["keep"], r.get("removed", ())): i for i, r in enumerate(self.records)
                       if not r.get("duplicate_of")}

    # --- candidates --------------------------------------------------------------------------------
    def predict(self, keep: list[int], removed: Sequence[str] = ()) -> float:
        """Predicted ms; with blocks removed, only the measured share of the removal's predicted saving counts."""
        width = float(self.env.predict_ms(self.space.as_dict(keep)))
        if not removed:
            return width
        scale = self.removal_scales.get(tuple(sorted(removed)), 1.0)
        return width - scale * (width - float(self.env.predict_ms(self.space.as_dict(keep), **removed_kwargs(removed))))

    def build(self, keep: list[int], removed: Sequence[str] = ()) -> Any:
        return self.env.build(self.space.as_dict(keep), **removed_kwargs(removed))

    def size_goal(self) -> float:
        return self.predict(self.uniform_fit[0]) if self.uniform_fit is not None else float(self.goal_ms)

    def size(self, prefs: np.ndarray, removed: Sequence[str] = ()) -> tuple[list[int], float]:
        """Size a plan to the goal: the same predicted latency as the measured-fit uniform plan once it
        exists (savings equal to its, whatever the model's calibration), else the target's goal."""
        if self.target.kind == "sparsity":
            total = sum(c for c, p in zip(self.space.channels, self.space.prunable, strict=True) if p)
            return self.space.size_to_channels(prefs, int(round((1.0 - self.target.value) * total)))
        return self.space.size_to_latency(prefs, lambda k: self.predict(k, removed), self.size_goal())

    def sized_plan(self, prefs: np.ndarray, removed: Sequence[str] = ()) -> tuple[list[int], float, np.ndarray]:
        """A challenger as scored: sized to the goal, then (``fill``, latency targets) filled up to it
        → (keep, scale, prefs of the filled plan)."""
        keep, scale = self.size(prefs, removed)
        if not self.config.fill or self.target.kind == "sparsity":
            return keep, scale, np.asarray(prefs, dtype=np.float64)
        keep, filled = self.space.fill(prefs, scale, keep, lambda k: self.predict(k, removed), self.size_goal())
        return keep, scale, filled

    def score(self, acc: float, pred: float, flops: float, params: float) -> float:
        """Accuracy alone for a latency target: every plan is sized to the same predicted latency, and
        a latency term would pay plans for budget they leave unused (the uniform plan, rounded to
        the channel multiple, sits below the goal: on the shipped VGG-19 that term turned a +0.78-point
        confirmation win into -0.33). The reward preset's terms rank plans for sparsity targets."""
        if self.target.kind != "sparsity":
            return float(acc)
        return float(reward(acc, pred, flops, params, self.base, self.weights))

    def evaluate(self, prefs: np.ndarray, round_: int, sized: tuple[list[int], float] | None = None,
                 kind: str = "sampled", removed: Sequence[str] = ()) -> dict[str, Any]:
        if sized is None:
            keep, scale, prefs = self.sized_plan(prefs, removed)
        else:
            keep, scale = sized
        keep = self.canonical(keep, removed)
        rec: dict[str, Any] = {"round": round_, "kind": kind, "prefs": [float(v) for v in prefs], "scale": scale,
                               "keep": keep}
        if removed:
            rec["removed"] = list(removed)
        hit = self._cache.get(self.key_of(keep, removed))
        if hit is not None:
            src = self.records[hit]
            rec.update({k: src[k] for k in ("acc", "kl", "pred_ms", "flops", "params", "q")}, duplicate_of=hit)
        else:
            model = self.build(keep, removed)
            if self.config.screen_batches > 0:
                self.env.probe(model, self.config.screen_batches)
            ev = self.env.evaluate(model)
            pred = self.predict(keep, removed)
            fl, pa = int(self.env.flops(model)), int(self.env.params(model))
            rec.update(acc=ev.acc, kl=ev.kl, pred_ms=pred, flops=fl, params=pa, q=self.score(ev.acc, pred, fl, pa))
            self._cache[self.key_of(keep, removed)] = len(self.records)
            self._held[len(self.records)] = model
        self.records.append(rec)
        self._evict(newest=len(self.records) - 1)
        return rec

    def _evict(self, newest: int) -> None:
        """Hold only the screened models the probe can use: the uniform plan's, the `probe_top` best
        others' and record `newest` (just screened)."""
        others = sorted((i for i in self._held if i not in (0, newest)), key=lambda i: self.key(self.records[i]),
                        reverse=True)
        for i in others[max(0, self.config.probe_top):]:
            del self._held[i]

    def probed_model(self, i: int, probing: bool) -> Any:
        """Record `i`'s model after the longer probe: its screened model (rebuilt and screened again
        when not held, as after a resume) trained on ``probe_batches − screen_batches`` more batches
        (stage 2, the same for every plan), so a probed plan has seen ``probe_batches`` in all. Without
        a probe: the screened model, compared as it was scored. Why continue and not start afresh:
        docs/compress.md ("The probe continues the screen")."""
        rec, cfg = self.records[i], self.config
        model = self._held.pop(i, None)
        if model is None:
            model = self.build(rec["keep"], rec.get("removed", ()))
            if cfg.screen_batches > 0:
                self.env.probe(model, cfg.screen_batches)
        if probing:
            more = cfg.probe_batches - cfg.screen_batches if cfg.screen_batches > 0 else cfg.probe_batches
            if more > 0:
                self.env.probe(model, more, stage=2 if cfg.screen_batches > 0 else 0)
        return model

    @staticmethod
    def key(r: dict[str, Any]) -> tuple[float, float]:
        return (r["q"], -r["kl"])

    def best(self) -> dict[str, Any]:
        return max(self.records, key=self.key)  # ties: the earliest (uniform first)

    # --- phases ------------------------------------------------------------------------------------
    def search(self, bar: Any, stop_after: int | None) -> bool:
        """Uniform plan, then the rounds; False when stopped early by `stop_after` (rounds)."""
        if not self.records:
            sized = (self.uniform_fit[0], self.uniform_fit[1]) if self.uniform_fit is not None else None
            self.evaluate(self.space.uniform_prefs(), -1, sized, kind="uniform")
            self.save()
            if bar is not None:
                bar.update(1)
        cfg = self.config
        while self.policy.round < cfg.rounds:
            if stop_after is not None and len(self.rounds) >= stop_after:
                return False
            r = self.policy.round
            k = min(cfg.per_round, cfg.candidates - r * cfg.per_round)
            t0 = time.perf_counter()
            for prefs, kind, removed, sized in self.proposals(r, k):
                self.evaluate(prefs, r, sized, kind=kind, removed=removed)
                if bar is not None:
                    bar.update(1)
            best = self.best()
            self.policy.update(np.asarray(best["prefs"]))
            self.rounds.append({"round": r, "sigma": self.policy.sigma(r), "best_acc": best["acc"],
                                "best_q": best["q"], "best_pred_ms": best["pred_ms"],
                                "round_s": time.perf_counter() - t0})
            if bar is not None:
                bar.set_postfix(best=f"{100 * best['acc']:.1f}%", uniform=f"{100 * self.records[0]['acc']:.1f}%")
            self.save()
        return True

    def proposals(self, round_: int, k: int) -> list[tuple[np.ndarray, str, tuple[str, ...], tuple[list[int], float]]]:
        """Round `round_`'s `k` plans: the structured depth ramps first, in round 0 the depth plans
        (both take slots of the candidate budget; depth plans beyond it are still proposed), then
        plans sampled from the distribution for the slots left, removing the blocks the best plan so
        far removes. Why ramps: docs/compress.md ("Structured candidates"); depth plans: ("Depth
        plans"; they took no slots until 2026-12-06, when plain VGG units made them 3 more plans)."""
        structured = [(self.space.ramp_prefs(a), f"ramp {a:+g}") for a in self.config.ramps] if self.space.dim > 1 else []
        start = round_ * self.config.per_round
        mine = [(p, kind, ()) for p, kind in structured[start : start + k]]
        if round_ == 0:
            mine += [(self.space.uniform_prefs(), f"depth -{len(rm)}", rm) for rm in self.depth_sets()]
        out = []
        for p, kind, rm in mine:  # each plan sized (and filled) once here, scored as sized
            keep, scale, filled = self.sized_plan(p, rm)
            out.append((filled, kind, rm, (keep, scale)))
        ahead = {self.key_of(self.canonical(keep, rm), rm) for _, _, rm, (keep, _) in out}
        removed = tuple(self.best().get("removed", ()))
        return out + [(p, "sampled", removed, sized)
                      for p, sized in self.distinct_samples(max(0, k - len(mine)), removed, ahead)]

    def distinct_samples(self, k: int, removed: tuple[str, ...],
                         ahead: Iterable[tuple] = ()) -> list[tuple[np.ndarray, tuple[list[int], float]]]:
        """`k` plans sampled from the distribution; one that sizes onto a plan already scored, one of
        this round's structured plans (keys `ahead`) or one drawn this round is drawn again with the
        noise doubled, up to ``resample_tries`` times (then kept, a free duplicate). Why: once the mean
        sits on the uniform plan, the last round's narrow noise rounds back to it on a coarse channel
        grid (ResNet-20 at multiple 16: all three round-1 samples were the uniform plan, so the search
        saw 8 plans, not 11). Returns (prefs as filled, (keep, scale)) per plan."""
        taken = set(self._cache) | set(ahead)
        out = []
        for _ in range(k):
            for attempt in range(self.config.resample_tries + 1):
                keep, scale, prefs = self.sized_plan(self.policy.sample(1, widen=2.0**attempt)[0], removed)
                key = self.key_of(self.canonical(keep, removed), removed)
                if key not in taken:
                    break
            taken.add(key)
            out.append((prefs, (keep, scale)))
        return out

    def probe_and_decide(self) -> None:
        """KD-probe the uniform plan and the best few, re-rank, confirm against uniform on held-out data."""
        if self.decision is not None:
            return
        uniform = self.records[0]
        distinct = sorted((i for i, r in enumerate(self.records) if i and not r.get("duplicate_of")
                           and (r["keep"], r.get("removed")) != (uniform["keep"], None)),
                          key=lambda i: self.key(self.records[i]), reverse=True)
        picks = [0] + distinct[: max(1, self.config.probe_top)]  # without probes: the screen's best vs uniform
        probes, models = [], {}
        probing = self.config.probe_top > 0 and self.config.probe_batches > 0
        for i in picks:
            rec = self.records[i]
            model = models[i] = self.probed_model(i, probing)
            ev = self.env.evaluate(model)
            probes.append({"record": i, "acc": ev.acc, "kl": ev.kl, "q": self.score(ev.acc, rec["pred_ms"], rec["flops"],
                                                                                     rec["params"])})
        self.probes = probes
        u = probes[0]
        challengers = probes[1:]
        best = max(challengers, key=lambda p: (p["q"], -p["kl"])) if challengers else None
        if best is not None and (best["q"], -best["kl"]) <= (u["q"], -u["kl"]):
            best = None  # no better than uniform after the probes: nothing to fit or confirm
        if best is not None and self.target.kind != "sparsity":
            best = self.fit_challenger(best, probes, models, probing)
        for p in (u, best):  # the two finalists: trained on (other) batches a while longer, then confirmed
            if p is None:
                continue
            model = models[p["record"]]
            if probing and self.config.final_batches > 0:
                self.env.probe(model, self.config.final_batches, stage=1)
                p["final_acc"] = self.env.evaluate(model).acc
            conf = self.env.confirm(model)
            p.update(confirm_acc=float(np.mean(conf)) if len(conf) else 0.0,
                     confirm=np.asarray(conf, dtype=np.uint8).tolist())
        decision: dict[str, Any] = {"chosen_record": 0, "fallback_to_uniform": True, "gain": 0.0, "se": 0.0,
                                    "why": "no other plan beat the uniform plan after the probes"}
        if best is not None:
            br, ur = self.records[best["record"]], self.records[0]
            extra = (self.score(0.0, br["pred_ms"], br["flops"], br["params"])
                     - self.score(0.0, ur["pred_ms"], ur["flops"], ur["params"]))  # non-accuracy reward terms
            gain, se = paired_gain(np.asarray(best["confirm"]), np.asarray(u["confirm"]))
            gain += extra
            wins = gain > 0 and gain > se and best.get("reached") is not False  # a plan over the target never wins
            decision = {"chosen_record": best["record"] if wins else 0, "fallback_to_uniform": not wins,
                        "gain": gain, "se": se, "candidate_record": best["record"], "candidate_reached": best.get("reached"),
                        "why": (f"best plan beats uniform on the confirmation split by {100 * gain:+.2f} points "
                                f"(paired SE {100 * se:.2f})" if wins else
                                "the best plan still measured over the target: uniform plan kept"
                                if best.get("reached") is False else
                                f"best plan's confirmation gain over uniform {100 * gain:+.2f} points is within one "
                                f"paired SE ({100 * se:.2f}): uniform plan kept")}
        self.decision = decision
        self.save()
        self.log(f"search: {decision['why']}")

    def fit_challenger(self, best: dict[str, Any], probes: list[dict[str, Any]], models: dict[int, Any],
                       probing: bool) -> dict[str, Any] | None:
        """Fit the re-ranked best plan to the target by measurement, beside the fitted uniform plan,
        before it is confirmed; re-sized, it is pruned afresh from the dense model and probed again.
        Why: docs/compress.md ("The winner is fitted before it is confirmed")."""
        rec = self.records[best["record"]]
        removed = tuple(rec.get("removed", ()))
        keep, scale, reached = self._fit(list(rec["keep"]), np.asarray(rec["prefs"]), float(rec["scale"]),
                                         list(self.uniform_fit[0]), removed)  # type: ignore[index]
        same = next((p for p in probes if self.key_of(self.records[p["record"]]["keep"],
                                                       self.records[p["record"]].get("removed", ())) == self.key_of(keep, removed)), None)
        if same is not None:  # as it was, or fitted onto a plan probed already (uniform: nothing to confirm)
            same["reached"] = reached
            return same if same["record"] else None
        fitted = self.evaluate(np.asarray(rec["prefs"]), -2, (keep, scale), kind=rec.get("kind", "sampled"),
                               removed=removed)
        fitted["fitted_from"] = best["record"]
        idx = len(self.records) - 1
        if fitted.get("duplicate_of") in self._held:  # re-sized onto a plan screened (and held) already
            self._held[idx] = self._held.pop(fitted["duplicate_of"])
        model = models[idx] = self.probed_model(idx, probing)
        ev = self.env.evaluate(model)
        p = {"record": idx, "acc": ev.acc, "kl": ev.kl, "fitted_from": best["record"], "reached": reached,
             "q": self.score(ev.acc, fitted["pred_ms"], fitted["flops"], fitted["params"])}
        probes.append(p)
        self.log(f"search: the best plan re-sized to the measured target: probe {100 * best['acc']:.1f}% -> "
                 f"{100 * ev.acc:.1f}%")
        return p

    def outcome(self) -> tuple[list[int], list[str], bool | None]:
        """The returned plan (keep, removed blocks) and whether it measured within the target: the
        uniform plan and a chosen challenger were both fitted by measurement before the decision."""
        assert self.uniform_fit is not None and self.decision is not None
        idx = int(self.decision["chosen_record"])
        keep, removed = list(self.records[idx]["keep"]), list(self.records[idx].get("removed", []))
        if self.target.kind == "sparsity":
            return keep, removed, None
        return keep, removed, (self.uniform_fit[2] if idx == 0 else self.decision.get("candidate_reached"))

def run_plan_search(
    env: PlanEnv,
    space: PlanSpace,
    target: Any,
    weights: RewardWeights,
    base: Baseline,
    dense_keep: dict[str, int],
    config: PlanSearchConfig,
    state_dir: str | os.PathLike,
    resume: bool = False,
    fingerprint: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> PlanResult | None:
    """Search plans for `target`; returns None when `stop_after` rounds were done (resume later)."""
    say = log or (lambda s: print(s, file=sys.stderr))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    s = _Search(env, space, target, weights, base, config, state_dir, fingerprint or {}, say)
    if resume:
        s.load()
        say(f"resuming the plan search after {len(s.records)} plans")
    env.anchor(dense_keep, s.base.latency_ms)  # anchor the latency model to the dense measurement
    with s.timed("calibrate"):
        s.calibrate_at_goal()  # and to the uniform plan measured near the goal
    with s.timed("fit uniform"):
        s.fit_uniform()  # the uniform plan fitted to the target by measurement: candidate 0
    with s.timed("depth"):
        s.calibrate_depth()  # and the depth plans measured beside it
    bar = None
    if progress:
        from rlprune_edge.progress import progress_bar

        first = min(config.per_round, config.candidates)  # round 0's slots; depth plans beyond them are extra
        ramps = min(len(config.ramps), first) if s.space.dim > 1 else 0
        extra = max(0, ramps + len(s.depth_sets()) - first)
        total = 1 + (0 if config.uniform_only else config.candidates + extra)
        bar = progress_bar(total=total, initial=min(len(s.records), total), desc="search plans", unit="plan")
    try:
        with s.timed("screen"):
            done = s.search(bar, stop_after)
        if not done:
            return None
    finally:
        if bar is not None:
            bar.close()
    if config.uniform_only:
        s.decision = s.decision or {"chosen_record": 0, "fallback_to_uniform": True, "gain": 0.0, "se": 0.0,
                                    "why": "uniform plan asked for (--search uniform)"}
        s.probes = s.probes or []
    else:
        with s.timed("probe and decide"):
            s.probe_and_decide()
    keep, removed, reached = s.outcome()
    chosen_rec = s.records[int(s.decision["chosen_record"])]  # type: ignore[index]
    model = s.build(keep, removed)
    last = next((m for m in reversed(s.measurements)  # the returned plan's
                 if s.key_of(m["keep"], m.get("removed", ())) == s.key_of(keep, removed)), {})
    probe_of = {p["record"]: p for p in (s.probes or [])}
    idx = int(s.decision["chosen_record"])  # type: ignore[index]
    s.save()
    return PlanResult(
        keep=space.as_dict(keep), model=model, removed_blocks=removed,
        chosen=plan_summary(space, chosen_rec, probe_of.get(idx, {}), last.get("ms"), last.get("ratio")),
        uniform=plan_summary(space, s.records[0], probe_of.get(0, {}), last.get("uniform_ms"), last.get("uniform_ratio")),
        fallback_to_uniform=bool(s.decision["fallback_to_uniform"]), reached=reached,  # type: ignore[index]
        records=[{k: v for k, v in r.items() if k != "prefs"} for r in s.records], rounds=s.rounds,
        probes=[{k: v for k, v in p.items() if k != "confirm"} for p in (s.probes or [])],
        measurements=s.measurements, calibration=s.calibration, wall_s=s.wall_before + time.perf_counter() - s.start,
        phase_s=dict(s.phase_s),
    )
