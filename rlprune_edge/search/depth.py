"""Depth plans: which residual blocks a candidate removes whole (``rlprune_edge.blocks``).

A width plan alone cannot go below the *floor* (every group at its narrowest), and near it every
group is squeezed. On runtimes where a small CNN's time is mostly per-layer cost, removing a few
residual blocks buys the same latency while the rest of the network keeps its width. The search
therefore also proposes plans that remove the ``d`` least influential blocks (block influence,
ShortGPT) for ``d = 1, 2, ...``, each with its widths sized to the same predicted latency as every
other candidate; the KD screen, the probes and the confirmation against the uniform plan judge them
like any other plan. ``d`` stops at the first count whose full-width model is predicted within the
goal (removing more could only leave budget unused) or at ``limit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


def depth_plans(blocks: Sequence[str], influence: Mapping[str, float],
                full_width_ms: Callable[[tuple[str, ...]], float], goal_ms: float | None,
                limit: int) -> list[tuple[str, ...]]:
    """Removal sets to propose, smallest first; each in module order.

    `blocks`: the removable blocks in module order; `influence`: block influence (smaller: removed
    first; ties by module order, later first); `full_width_ms(removed)`: predicted latency of the
    dense widths with `removed` gone; `goal_ms`: None for a sparsity target (then ``limit`` sets)."""
    if limit <= 0 or not blocks:
        return []
    pos = {b: i for i, b in enumerate(blocks)}
    order = sorted(blocks, key=lambda b: (float(influence.get(b, 0.0)), -pos[b]))
    out: list[tuple[str, ...]] = []
    for d in range(1, len(order) + 1):
        removed = tuple(sorted(order[:d], key=pos.__getitem__))
        out.append(removed)
        if len(out) >= limit or (goal_ms is not None and full_width_ms(removed) <= goal_ms):
            break
    return out


def describe(removed: Sequence[str]) -> str:
    """A short label for logs and records."""
    return f"depth -{len(removed)} ({', '.join(removed)})" if removed else "width only"


def plan_key(keep: Sequence[int], removed: Sequence[str] | None) -> tuple:
    """One plan's identity: its keep counts and the blocks it removes."""
    return (*keep, *sorted(removed or ()))


def removed_kwargs(removed: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``removed=`` for the environment only when blocks are removed (width-only environments need not know)."""
    return {"removed": tuple(removed)} if removed else {}
