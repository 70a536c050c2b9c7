"""The RL-Pruner search loop (agent separate from the environment, AMC style).

The environment (:class:`SearchEnv`, implemented for real models in :mod:`rlprune_edge.search.env`)
knows the model: groups, Taylor scores, pruning to keep counts, BatchNorm recalibration, validation
accuracy, predicted and measured latency. The agent is :class:`PruneDistribution`. This module
holds what ties them: splitting a step's channel budget across groups, the step itself (K sampled
actions × R rounds, replay buffer, PD update, ε-greedy choice, collapse reset), the stopping rule,
and resumable state (a checkpoint after every step, written atomically).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from rlprune_edge.config import SearchConfig  # noqa: F401 - re-exported, defined with every default in one place
from rlprune_edge.errors import UserError
from rlprune_edge.search.policy import PruneDistribution
from rlprune_edge.search.reward import Baseline, RewardWeights, reward

STATE_VERSION = 1


# --- target --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What to stop at: ``ratio`` (of dense measured latency), ``ms``, or ``sparsity``."""

    kind: str
    value: float

    @classmethod
    def parse_latency(cls, text: str, name: str = "target latency") -> Target:
        """`0.5x` / `0.5` → ratio of dense latency; `3ms` → absolute milliseconds (`name` labels errors)."""
        t = str(text).strip().lower()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|ms)?", t)
        if not m:
            raise UserError(
                f"{name} {text!r} is not understood; write a fraction of the dense latency "
                "like 0.5x or an absolute time like 3ms."
            )
        value, unit = float(m.group(1)), m.group(2) or "x"
        if unit == "x":
            if not 0.0 < value < 1.0:
                raise UserError(f"{name} {text!r} must be a fraction in (0, 1) of the dense latency, e.g. 0.5x.")
            return cls("ratio", value)
        if not (value > 0 and math.isfinite(value)):
            raise UserError(f"{name} {text!r} must be a positive time, e.g. 3ms.")
        return cls("ms", value)

    @classmethod
    def sparsity(cls, value: float, name: str = "sparsity") -> Target:
        """Fraction of prunable channels to remove, in (0, 1)."""
        if not 0.0 < float(value) < 1.0:
            raise UserError(f"{name} {value} is outside (0, 1); give the fraction of prunable channels to remove, e.g. 0.6.")
        return cls("sparsity", float(value))

    def describe(self) -> str:
        return {"ratio": f"{self.value:g}x dense latency", "ms": f"{self.value:g} ms",
                "sparsity": f"sparsity {self.value:g}"}[self.kind]

    def latency_goal_ms(self, dense_ms: float) -> float | None:
        """The latency to reach in ms, or None for sparsity targets."""
        if self.kind == "ratio":
            return self.value * dense_ms
        if self.kind == "ms":
            return self.value
        return None

    def met(self, *, measured_ms: float, measured_ratio: float, sparsity: float, unit_fraction: float) -> bool:
        """True once the step's real measurement (or sparsity) satisfies the target."""
        if self.kind == "ratio":
            return measured_ratio <= self.value
        if self.kind == "ms":
            return measured_ms <= self.value
        return sparsity >= self.value - unit_fraction / 2


# --- configuration -------------------------------------------------------------------------------
class GroupLike(Protocol):
    name: str
    channels: int
    prunable: bool


class SearchEnv(Protocol):
    """What the loop needs from the world; see :class:`rlprune_edge.search.env.PruneEnv`."""

    channel_multiple: int

    def groups(self, model: nn.Module) -> list[GroupLike]: ...
    def scores(self, model: nn.Module, groups: list[GroupLike]) -> Any: ...
    def candidate(self, model: nn.Module, keep: dict[str, int], scores: Any, groups: list[GroupLike]) -> nn.Module: ...
    def evaluate(self, model: nn.Module) -> float: ...
    def predict_ms(self, keep: dict[str, int]) -> float: ...
    def flops(self, model: nn.Module) -> int: ...
    def params(self, model: nn.Module) -> int: ...
    def measure(self, model: nn.Module) -> tuple[float, float]: ...
    def correct(self, keep: dict[str, int], measured_ms: float) -> None: ...
    def finetune(self, model: nn.Module, step: int) -> None: ...
    def save_model(self, path: Path, model: nn.Module) -> None: ...
    def load_model(self, path: Path) -> nn.Module: ...


# --- channel budget split --------------------------------------------------------------------------
def allocate_keep(
    channels: Sequence[int],
    prunable: Sequence[bool],
    probs: Sequence[float],
    remove: int,
    multiple: int = 1,
) -> list[int]:
    """Keep counts after removing about `remove` channels split across groups ∝ `probs`.

    Works in units of `multiple` channels (largest-remainder rounding, so the total is kept), never
    leaves a group below `multiple` channels, redistributes what a full group cannot take, and keeps
    every kept count a multiple of `multiple` for groups it touches.
    """
    m = max(1, int(multiple))
    ch = [int(c) for c in channels]
    floor_keep = [(c // m) * m if c >= m else c for c in ch]
    cap = [max(0, (fk - m) // m) if p else 0 for fk, p in zip(floor_keep, prunable, strict=True)]
    units = int(round(remove / m))
    take = [0] * len(ch)
    p = np.array([float(x) if c > 0 else 0.0 for x, c in zip(probs, cap, strict=True)], dtype=np.float64)
    left = min(units, sum(cap))
    while left > 0:
        open_ = np.array([t < c for t, c in zip(take, cap, strict=True)])
        w = np.where(open_, p, 0.0)
        if w.sum() <= 0:
            w = open_.astype(np.float64)
        quota = left * w / w.sum()
        base = np.floor(quota).astype(int)
        extra = left - int(base.sum())
        order = np.argsort(-(quota - base), kind="stable")
        for i in order[:extra]:
            base[i] += 1
        given = 0
        for i in range(len(ch)):
            g = min(int(base[i]), cap[i] - take[i])
            take[i] += g
            given += g
        if given == 0:
            break
        left -= given
    return [ch[i] if take[i] == 0 else floor_keep[i] - take[i] * m for i in range(len(ch))]


def _progress(target: Target, ratio: float, sparsity: float, goal_ms: float | None, dense_ms: float) -> float:
    """Fraction of the way from the dense model to the target, in [0, 0.99] until it is reached."""
    if target.kind == "sparsity":
        done = sparsity / target.value
    else:
        goal_ratio = (goal_ms or dense_ms) / dense_ms
        done = (1.0 - ratio) / (1.0 - goal_ratio) if goal_ratio < 1.0 else 1.0
    return float(min(max(done, 0.0), 0.99))


def max_prune_keep(channels: Sequence[int], prunable: Sequence[bool], multiple: int = 1) -> list[int]:
    """The smallest architecture the search may reach: every prunable group at `multiple` channels."""
    m = max(1, int(multiple))
    return [min(c, m) if p else c for c, p in zip(channels, prunable, strict=True)]


# --- state ---------------------------------------------------------------------------------------
def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class SearchResult:
    """The searched (not yet distilled) model and the per-step log."""

    model: nn.Module
    steps: list[dict]
    dense: dict
    reached: bool
    wall_s: float
    state_dir: Path


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**31 - 1)


def run_search(
    env: SearchEnv,
    dense: nn.Module,
    target: Target,
    weights: RewardWeights,
    dense_figures: dict,
    config: SearchConfig,
    state_dir: str | os.PathLike,
    resume: bool = False,
    fingerprint: dict | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
) -> SearchResult:
    """Prune `dense` step by step until `target` is met; checkpoint after every step into `state_dir`.

    `dense_figures` holds the dense model's ``val_acc, latency_ms (measured), flops, params``.
    With `resume`, continues from `state_dir/state.json` (same settings required) and replays the
    recorded latency corrections instead of re-measuring, so it reaches the same result as an
    uninterrupted run. `stop_after` ends the loop after that many completed steps (for tests).
    """
    # long: the paper's step loop (kept as `--search paper`, the default is the plan search) carries the
    # policy, the resume replay, the equal-latency step goal and the per-step checkpoint through one
    # loop; its exact-resume tests pin this order, so it stays one function until the loop is retired.
    say = log or (lambda s: print(s, file=sys.stderr))
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / "state.json"
    groups0 = env.groups(dense)
    names = [g.name for g in groups0]
    ch0 = [int(g.channels) for g in groups0]
    prunable = [bool(g.prunable) for g in groups0]
    total0 = sum(c for c, p in zip(ch0, prunable, strict=True) if p)
    m = max(1, int(env.channel_multiple))
    policy = PruneDistribution(names, ch0, prunable, config.policy, seed=config.seed)
    base = Baseline(float(dense_figures["latency_ms"]), float(dense_figures["flops"]), float(dense_figures["params"]))
    fp = {"target": asdict(target), "weights": asdict(weights), "config": config.fingerprint(),
          "groups": list(zip(names, ch0, strict=True)), **(fingerprint or {})}
    goal_ms = target.latency_goal_ms(base.latency_ms)
    if target.kind == "sparsity":
        planned = math.ceil(target.value / config.step_ratio)
    else:
        ratio = (goal_ms or base.latency_ms) / base.latency_ms
        planned = max(1, math.ceil(max(0.05, 1.0 - math.sqrt(min(1.0, ratio))) / config.step_ratio))
    # ours: candidates sized to one predicted latency per step (the paper's channel budget otherwise)
    latency_steps = config.equal_latency_steps and goal_ms is not None and weights.latency > 0
    steps: list[dict] = []
    model = dense
    wall_before = 0.0
    ref_acc = float(dense_figures["val_acc"])
    if resume:
        if not state_path.exists():
            raise UserError(f"resume: no search state in {state_dir}; start the run without resuming.")
        state = json.loads(state_path.read_text())
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != json.loads(json.dumps(fp)):
            raise UserError(
                f"resume: the run in {state_dir} was started with different settings (model, data, "
                "profile, target, reward or seed); rerun with the same settings or start without resuming."
            )
        policy.load_state_dict(state["policy"])
        steps = state["steps"]
        planned = state["planned"]
        wall_before = float(state["wall_s"])
        ref_acc = float(state["ref_acc"])
        base = Baseline(**state["baseline"])
        env.correct(dict(zip(names, ch0, strict=True)), base.latency_ms)  # same anchor as the fresh run
        for s in steps:  # replay, don't re-measure: measurements must not change a resumed run
            env.correct(dict(zip(names, s["keep"], strict=True)), s["measured_latency_ms"])
            if latency_steps:
                goal_ms = _goal_in_window(target, goal_ms, s["measured_latency_ms"], s["measured_ratio"])
        if steps:
            model = env.load_model(state_dir / steps[-1]["model_file"])
            if steps[-1].get("done"):
                return SearchResult(model, steps, dict(state["dense"]), bool(steps[-1].get("reached")),
                                    wall_before, state_dir)
        say(f"resuming after step {len(steps)}")
    else:
        # anchor the latency model to the dense measurement, so rewards see the real scale from step 1
        env.correct(dict(zip(names, ch0, strict=True)), base.latency_ms)
    start = time.perf_counter()
    bar = None
    if progress:
        from rlprune_edge.progress import progress_bar

        # a bar on the way from dense to the goal (measured ratio, or sparsity), not on a step count the
        # search cannot know in advance
        bar = progress_bar(total=100, initial=0, desc=f"search -> {target.describe()}", unit="%",
                           bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
    reached = False
    try:
        while len(steps) < config.max_steps:
            if stop_after is not None and len(steps) >= stop_after:
                break
            step = len(steps)
            t0 = time.perf_counter()
            torch.manual_seed(_step_seed(config.seed, step))
            groups = env.groups(model)
            by_name = {g.name: int(g.channels) for g in groups}
            ch = [by_name.get(n, 0) for n in names]
            removed = total0 - sum(c for c, p in zip(ch, prunable, strict=True) if p)
            budget = int(round(config.step_ratio * total0))
            if target.kind == "sparsity":
                budget = min(budget, int(round(target.value * total0)) - removed)
            budget = max(m, budget)
            if config.adaptive_last_step and goal_ms is not None:
                budget = _shrink_budget(env, names, ch, prunable, policy.pd, budget, m, goal_ms)
            if max_prune_keep(ch, prunable, m) == ch or allocate_keep(ch, prunable, policy.pd, budget, m) == ch:
                say("nothing left to prune within the channel multiple; stopping before the target")
                break
            scores = env.scores(model, groups)
            step_goal_ms = None
            if latency_steps:
                pd_keep = allocate_keep(ch, prunable, policy.pd, budget, m)
                step_goal_ms = env.predict_ms(dict(zip(names, pd_keep, strict=True)))
                if env.predict_ms(dict(zip(names, ch, strict=True))) > goal_ms:
                    step_goal_ms = max(goal_ms, step_goal_ms)  # don't overshoot; else the model was wrong: go on
            buffer: list[dict] = []
            for _ in range(config.rounds):
                for action in policy.sample(config.candidates):
                    if step_goal_ms is None:
                        keep_list = allocate_keep(ch, prunable, action, budget, m)
                    else:
                        keep_list = keep_for_latency(env, names, ch, prunable, action, m, step_goal_ms)
                    keep = dict(zip(names, keep_list, strict=True))
                    cand = env.candidate(model, keep, scores, groups)
                    acc = float(env.evaluate(cand))
                    pred = float(env.predict_ms(keep))
                    fl, pa = int(env.flops(cand)), int(env.params(cand))
                    q = reward(acc, pred, fl, pa, base, weights)
                    buffer.append({"q": q, "acc": acc, "pred": pred, "flops": fl, "params": pa,
                                   "keep": keep_list, "action": action, "model": cand})
                    buffer.sort(key=lambda c: -c["q"])
                    del buffer[config.candidates:]
                policy.update(buffer[0]["action"])
            pick = policy.choose([c["q"] for c in buffer], step, planned)
            chosen = buffer[pick]
            reset = policy.collapsed(chosen["acc"], ref_acc)
            if reset:
                policy.reset()
            ref_acc = chosen["acc"]
            model = chosen["model"]
            env.finetune(model, step)
            measured_ms, measured_ratio = env.measure(model)
            if goal_ms is not None and config.confirm and (
                measured_ms <= goal_ms if target.kind == "ms" else measured_ratio <= target.value
            ):  # about to stop on one noisy measurement: measure again and use the mean
                again_ms, again_ratio = env.measure(model)
                measured_ms, measured_ratio = (measured_ms + again_ms) / 2, (measured_ratio + again_ratio) / 2
            keep = dict(zip(names, chosen["keep"], strict=True))
            env.correct(keep, measured_ms)
            if latency_steps:
                goal_ms = _goal_in_window(target, goal_ms, measured_ms, measured_ratio)
            sparsity = 1.0 - sum(k for k, p in zip(chosen["keep"], prunable, strict=True) if p) / total0
            reached = target.met(measured_ms=measured_ms, measured_ratio=measured_ratio, sparsity=sparsity,
                                 unit_fraction=m / total0)
            model_file = f"step_{step + 1:03d}.pt"
            env.save_model(state_dir / model_file, model)
            rec = {
                "step": step + 1, "val_acc": chosen["acc"], "reward": chosen["q"],
                "predicted_latency_ms": chosen["pred"], "measured_latency_ms": measured_ms,
                "measured_ratio": measured_ratio, "flops": chosen["flops"], "params": chosen["params"],
                "sparsity": sparsity,
                "channels_removed": sum(a - b for a, b in zip(ch, chosen["keep"], strict=True)),
                "step_goal_ms": step_goal_ms, "keep": chosen["keep"],
                "explored": pick != 0, "pd_reset": reset, "candidates": config.candidates * config.rounds,
                "step_s": time.perf_counter() - t0, "model_file": model_file, "reached": reached,
                "done": reached,
            }
            steps.append(rec)
            _atomic_json(state_path, {
                "version": STATE_VERSION, "fingerprint": fp, "policy": policy.state_dict(), "steps": steps,
                "planned": planned, "ref_acc": ref_acc, "baseline": asdict(base), "dense": dense_figures,
                "wall_s": wall_before + time.perf_counter() - start,
            })
            if bar is not None:
                bar.n = 100 if reached else int(round(100 * _progress(target, measured_ratio, sparsity, goal_ms,
                                                                     base.latency_ms)))
                bar.set_postfix_str(f"step {len(steps)}: {measured_ratio:.2f}x dense ({measured_ms:.3f} ms), "
                                    f"sparsity {sparsity:.2f}, val acc {100 * chosen['acc']:.1f}%")
            if reached:
                break
    finally:
        if bar is not None:
            bar.close()
    return SearchResult(model, steps, dict(dense_figures), reached,
                        wall_before + time.perf_counter() - start, state_dir)


def _goal_in_window(target: Target, goal_ms: float | None, measured_ms: float, measured_ratio: float) -> float | None:
    """A ratio target's goal in ms, re-anchored to the dense latency of the latest measurement window.

    The latency model is corrected with each step's measurement, so the goal it is compared with must
    be on the same window's scale: on a drifting machine the first dense measurement is not.
    """
    if target.kind != "ratio" or goal_ms is None or measured_ratio <= 0:
        return goal_ms
    return target.value * measured_ms / measured_ratio


def keep_for_latency(
    env: SearchEnv, names: list[str], ch: list[int], prunable: list[bool], action: np.ndarray, m: int,
    goal_ms: float,
) -> list[int]:
    """Keep counts that split removal ∝ `action` with the fewest channels predicted to reach `goal_ms`.

    Bisects the channel budget (units of m); when even the smallest allowed widths are predicted
    slower than `goal_ms`, returns those widths.
    """
    cap = sum(c - k for c, k, p in zip(ch, max_prune_keep(ch, prunable, m), prunable, strict=True) if p)

    def keep_at(units: int) -> list[int]:
        return allocate_keep(ch, prunable, action, units * m, m)

    def fits(units: int) -> bool:
        return env.predict_ms(dict(zip(names, keep_at(units), strict=True))) <= goal_ms

    lo, hi = 1, max(1, cap // m)
    if not fits(hi):
        return keep_at(hi)
    while lo < hi:  # smallest budget that fits (prediction falls as the budget grows)
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return keep_at(lo)


def _shrink_budget(
    env: SearchEnv, names: list[str], ch: list[int], prunable: list[bool], pd: np.ndarray,
    budget: int, m: int, goal_ms: float,
) -> int:
    """Smallest budget (in units of m, ≤ `budget`) whose predicted latency under PD reaches `goal_ms`."""
    units = max(1, int(round(budget / m)))
    if env.predict_ms(dict(zip(names, ch, strict=True))) <= goal_ms:
        # the (corrected) predictor already thinks we are there but the measurement disagreed: half steps
        return max(m, (units // 2) * m)
    for u in range(1, units):
        keep = allocate_keep(ch, prunable, pd, u * m, m)
        if env.predict_ms(dict(zip(names, keep, strict=True))) <= goal_ms:
            return u * m
    return budget
