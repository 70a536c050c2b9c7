"""What the plan search needs from the world (:class:`PlanEnv`, real one in
:mod:`rlprune_edge.search.proxy`), what it returns (:class:`PlanResult`), and the paired statistic
its guarantee uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Evaluation:
    """A model's proxy figures on the selection split."""

    acc: float
    kl: float
    correct: np.ndarray  # per image, bool


class PlanEnv(Protocol):
    """What the search needs from the world; see :class:`rlprune_edge.search.proxy.PlanProxy`."""

    # `removed`: blocks the plan removes whole (rlprune_edge.blocks); passed only when any
    def predict_ms(self, keep: dict[str, int], removed: tuple[str, ...] = ()) -> float: ...
    def build(self, keep: dict[str, int], removed: tuple[str, ...] = ()) -> Any: ...
    def evaluate(self, model: Any) -> Evaluation: ...
    def confirm(self, model: Any) -> np.ndarray: ...
    def probe(self, model: Any, batches: int, stage: int = 0) -> None: ...
    def flops(self, model: Any) -> int: ...
    def params(self, model: Any) -> int: ...
    def measure(self, models: list[Any]) -> tuple[float, list[tuple[float, float]]]: ...
    def correct(self, keep: dict[str, int], measured_ms: float) -> None: ...
    def anchor(self, keep: dict[str, int], measured_ms: float) -> None: ...
    def rescale(self, keep: dict[str, int], measured_ratio: float) -> None: ...


@dataclass
class PlanResult:
    """The chosen plan and how it was found (all JSON-able but `model`)."""

    keep: dict[str, int]
    model: Any
    removed_blocks: list[str]
    chosen: dict[str, Any]
    uniform: dict[str, Any]
    fallback_to_uniform: bool
    reached: bool | None
    records: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    probes: list[dict[str, Any]]
    measurements: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    wall_s: float
    phase_s: dict[str, float] = field(default_factory=dict)  # seconds per search phase ("measuring": within them)


def paired_gain(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean of a − b, its standard error) for per-image correctness vectors of one split."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()) if len(d) else 0.0, float("inf")
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def plan_summary(space: Any, rec: dict[str, Any], probe: dict[str, Any], ms: float | None,
                 ratio: float | None) -> dict[str, Any]:
    """What the report says of one searched plan (record `rec`, its probe figures, its measurement)."""
    return {"keep": space.as_dict(rec["keep"]), "removed_blocks": rec.get("removed", []), "kind": rec.get("kind"),
            "shrunk_after_measuring": "fitted_from" in rec, "proxy_acc": rec["acc"], "proxy_kl": rec["kl"],
            "predicted_ms": rec["pred_ms"], "probe_acc": probe.get("acc"), "final_acc": probe.get("final_acc"),
            "confirm_acc": probe.get("confirm_acc"), "measured_ms": ms, "measured_ratio": ratio,
            "flops": rec["flops"], "params": rec["params"]}
