"""The RL-Pruner agent: a prune distribution (PD) over prunable channel groups.

Faithful to Wang & Kindratenko (2024): PD is initialised proportional to each prunable group's
channel count (unprunable groups get 0); an action is PD' = normalise(clamp(PD + v·u·z, ≥ 1e-5))
with z ~ N(0, I) and one u ~ U(0, 1) per action; after a round PD moves toward the best action,
PD ← PD + λ(PD_best − PD), the per-group ratio PD_new/PD is clipped to [1 − δ, 1 + δ] and PD is
renormalised. The step's model is chosen ε-greedily with ε decaying (cosine) to 0 over the first
10% of steps, and PD is reset when accuracy collapses. All randomness comes from one seeded numpy
Generator whose state is part of :meth:`PruneDistribution.state_dict` (resume gives identical draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from rlprune_edge.config import PlanPolicyConfig, PolicyConfig  # noqa: F401 - re-exported, defined with every default in one place


class PruneDistribution:
    """Prune distribution over groups; sampling, update toward the best action, ε-greedy choice."""

    def __init__(
        self,
        names: Sequence[str],
        channels: Sequence[int],
        prunable: Sequence[bool],
        config: PolicyConfig | None = None,
        seed: int = 0,
    ) -> None:
        if not (len(names) == len(channels) == len(prunable)):
            raise ValueError("names, channels and prunable must have the same length")
        self.names = list(names)
        self.config = config or PolicyConfig()
        self.mask = np.array([bool(p) and c > 0 for p, c in zip(prunable, channels, strict=True)], dtype=bool)
        if not self.mask.any():
            raise ValueError("no prunable group to distribute pruning over")
        init = np.where(self.mask, np.asarray(channels, dtype=np.float64), 0.0)
        self.init_pd = init / init.sum()
        self.pd = self.init_pd.copy()
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.resets = 0

    # --- agent actions -------------------------------------------------------------------------
    def _normalise(self, p: np.ndarray) -> np.ndarray:
        p = np.where(self.mask, np.maximum(p, self.config.min_prob), 0.0)
        return p / p.sum()

    def sample(self, k: int) -> list[np.ndarray]:
        """K actions PD' = normalise(clamp(PD + v·u·z, ≥ min_prob)); one scalar u per action."""
        actions = []
        for _ in range(k):
            z = self.rng.standard_normal(len(self.pd))
            u = self.rng.uniform(0.0, 1.0)
            actions.append(self._normalise(self.pd + self.config.noise * u * z))
        return actions

    def update(self, best: np.ndarray) -> None:
        """Move PD toward the best action (rate λ), clip the change ratio to [1−δ, 1+δ], renormalise."""
        best = np.asarray(best, dtype=np.float64)
        new = self.pd + self.config.lr * (best - self.pd)
        safe = np.where(self.pd > 0, self.pd, 1.0)
        ratio = np.clip(new / safe, 1.0 - self.config.clip, 1.0 + self.config.clip)
        self.pd = self._normalise(np.where(self.mask, self.pd * ratio, 0.0))

    def reset(self) -> None:
        """Back to the initial distribution (after an accuracy collapse)."""
        self.pd = self.init_pd.copy()
        self.resets += 1

    def epsilon(self, step: int, total_steps: int) -> float:
        """ε for `step` (0-based): cosine decay from ε0 to 0 over the first 10% of `total_steps`."""
        decay = max(1, math.ceil(self.config.epsilon_decay_frac * max(1, total_steps)))
        if step >= decay:
            return 0.0
        return self.config.epsilon * 0.5 * (1.0 + math.cos(math.pi * step / decay))

    def choose(self, rewards: Sequence[float], step: int, total_steps: int) -> int:
        """ε-greedy index into `rewards`: random with probability ε, else the best."""
        if not rewards:
            raise ValueError("no candidate to choose from")
        eps = self.epsilon(step, total_steps)
        # Always draw so the RNG stream does not depend on ε (keeps resume bookkeeping simple).
        explore = self.rng.uniform(0.0, 1.0) < eps
        pick = int(self.rng.integers(len(rewards)))
        return pick if explore else int(np.argmax(np.asarray(rewards)))

    def collapsed(self, acc: float, reference_acc: float) -> bool:
        """True when `acc` dropped more than `collapse` (relative) below `reference_acc`."""
        return acc < reference_acc * (1.0 - self.config.collapse)

    # --- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable state (distribution, initial distribution, RNG state, config)."""
        return {
            "names": list(self.names),
            "mask": self.mask.tolist(),
            "pd": self.pd.tolist(),
            "init_pd": self.init_pd.tolist(),
            "rng": self.rng.bit_generator.state,
            "resets": self.resets,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`; the group names must match."""
        if list(state["names"]) != self.names:
            raise ValueError("policy state was saved for different groups")
        self.mask = np.asarray(state["mask"], dtype=bool)
        self.pd = np.asarray(state["pd"], dtype=np.float64)
        self.init_pd = np.asarray(state["init_pd"], dtype=np.float64)
        self.rng.bit_generator.state = state["rng"]
        self.resets = int(state["resets"])
        self.config = PolicyConfig(**state["config"])


class PlanDistribution:
    """RL-Pruner's prune distribution over whole plans, in log space.

    The mean starts at 0 (the uniform plan). Each round samples K preference vectors
    ``mean + σ_r · z`` (noise relative to every entry, decaying over rounds), the environment sizes
    each to the goal and scores it, and the mean moves toward the best plan found so far (elitist,
    like RL-Pruner's update toward the best action). Vectors are centred: only their differences
    matter because the global scale is bisected. State (mean, round, RNG) is JSON-serialisable.
    """

    def __init__(self, dim: int, rounds: int, config: PlanPolicyConfig | None = None, seed: int = 0) -> None:
        self.dim = int(dim)
        self.rounds = max(1, int(rounds))
        self.config = config or PlanPolicyConfig()
        self.mean = np.zeros(self.dim)
        self.round = 0
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def sigma(self, r: int | None = None) -> float:
        """σ for round `r` (0-based): cosine decay from sigma to sigma_min over the rounds."""
        r = self.round if r is None else r
        c = self.config
        t = min(1.0, r / max(1, self.rounds - 1))
        return c.sigma_min + (c.sigma - c.sigma_min) * 0.5 * (1.0 + math.cos(math.pi * t))

    def sample(self, k: int, widen: float = 1.0) -> list[np.ndarray]:
        """K centred preference vectors around the mean (noise σ_r × `widen`)."""
        s = self.sigma() * widen
        out = []
        for _ in range(k):
            v = self.mean + s * self.rng.standard_normal(self.dim)
            out.append(v - v.mean() if self.dim else v)
        return out

    def update(self, best: np.ndarray) -> None:
        """Move the mean toward the best plan so far; next round."""
        best = np.asarray(best, dtype=np.float64)
        if self.dim:
            self.mean = self.mean + self.config.lr * (best - self.mean)
            self.mean -= self.mean.mean()
        self.round += 1

    def state_dict(self) -> dict:
        return {"dim": self.dim, "rounds": self.rounds, "mean": self.mean.tolist(), "round": self.round,
                "rng": self.rng.bit_generator.state, "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["dim"]) != self.dim:
            raise ValueError("plan policy state was saved for a different number of groups")
        self.rounds = int(state["rounds"])
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.round = int(state["round"])
        self.rng.bit_generator.state = state["rng"]
        self.config = PlanPolicyConfig(**state["config"])
