"""The reward Q = val_acc + c_L·latency reduction + c_F·FLOPs reduction + c_P·params reduction.

Reductions are relative to the dense model (1 − x / x_dense). Accuracy is measured on a fixed
validation subset of the training split (never the test split). The latency is the latency model's
prediction for the target profile (corrected each step by a real measurement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlprune_edge.errors import UserError
from rlprune_edge.profiles import DEFAULT_LATENCY_COEFF, RewardWeights

__all__ = ["PRESETS", "Baseline", "RewardWeights", "reduction", "reward", "weights_for"]

PRESETS = ("latency", "accuracy", "flops", "params")
PAPER_COEFF = 0.25  # the paper's c_F / c_P for its FLOPs and params variants


@dataclass(frozen=True)
class Baseline:
    """The dense model's figures that reductions are relative to."""

    latency_ms: float
    flops: float
    params: float


def weights_for(preset: str, profile: Any | None = None) -> RewardWeights:
    """Coefficients for a `--reward` preset; `latency` reads c_L/c_F/c_P from `profile.reward`."""
    if preset == "accuracy":
        return RewardWeights(latency=0.0)
    if preset == "flops":
        return RewardWeights(latency=0.0, flops=PAPER_COEFF)
    if preset == "params":
        return RewardWeights(latency=0.0, params=PAPER_COEFF)
    if preset == "latency":
        section = getattr(profile, "reward", None)
        c_l = getattr(section, "latency", None)
        return RewardWeights(
            latency=DEFAULT_LATENCY_COEFF if c_l is None else float(c_l),
            flops=float(getattr(section, "flops", 0.0) or 0.0),
            params=float(getattr(section, "params", 0.0) or 0.0),
        )
    raise UserError(f"unknown reward {preset!r}; use one of {', '.join(PRESETS)}.")


def reduction(value: float, base: float) -> float:
    """1 − value/base (0 when base is not positive)."""
    return 1.0 - float(value) / float(base) if base > 0 else 0.0


def reward(
    val_acc: float,
    latency_ms: float,
    flops: float,
    params: float,
    base: Baseline,
    weights: RewardWeights,
) -> float:
    """Q for one candidate (accuracy as a fraction in [0, 1])."""
    return (
        float(val_acc)
        + weights.latency * reduction(latency_ms, base.latency_ms)
        + weights.flops * reduction(flops, base.flops)
        + weights.params * reduction(params, base.params)
    )
