"""The PNG plots of BENCHMARKS.md: accuracy vs measured latency, and latency-model fidelity."""

from __future__ import annotations

import math
import os
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.benchmark.plan import METHOD_LABELS, METHOD_STYLE, METHODS


def _mean(vals: Sequence[float]) -> float:
    return float(statistics.fmean(vals))


def _pareto_plot(path: Path, label: str, rows: list[dict[str, Any]], base: dict[str, Any] | None, how: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.2))
    ax = fig.add_subplot(111)
    for method in METHODS:
        pts: dict[float, list[dict[str, Any]]] = {}
        for r in rows:
            if r["method"] == method:
                pts.setdefault(r["target"], []).append(r)
        if not pts:
            continue
        xs = [_mean([r["measured_ratio"] for r in v]) for v in pts.values()]
        ys = [_mean([r["test_acc"] for r in v]) * 100 for v in pts.values()]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        color, marker = METHOD_STYLE[method]
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker=marker, color=color, label=METHOD_LABELS[method])
    dense_acc = rows[0]["base_test_acc"] * 100 if rows else None
    if dense_acc is not None:
        ax.plot([1.0], [dense_acc], marker="*", markersize=14, color="black", linestyle="none", label="dense")
    for t in sorted({r["target"] for r in rows}):
        ax.axvline(t, color="0.8", linestyle=":", linewidth=1)
    ax.set_xlabel("measured latency / dense (median, interleaved blocks)")
    ax.set_ylabel("test accuracy (%)")
    if base and base.get("latency_ms"):
        dense_ms = float(base["latency_ms"])
        top = ax.secondary_xaxis("top", functions=(lambda r: r * dense_ms, lambda ms: ms / dense_ms))
        top.set_xlabel(f"≈ latency in ms (dense {dense_ms:.3f} ms, base-model measurement)")
    ax.set_title(f"{label}: test accuracy vs measured latency", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, how, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save_fig(fig, path)


def _fidelity_plot(path: Path, fid: list[dict[str, Any]], how: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.2))
    ax = fig.add_subplot(111)
    lo, hi = math.inf, 0.0
    for r in fid:
        xs = [p["measured_ms"] for p in r["points"]]
        ys = [p["predicted_ms"] for p in r["points"]]
        if xs:
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
            ax.scatter(xs, ys, s=14, label=f"{r['label']} (median |err| {r['median_abs_rel_error']:.1%})")
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="predicted = measured")
    ax.set_xlabel("measured latency (ms; ratio to dense in interleaved blocks × fitted dense ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("Latency model fidelity (rlprune-edge latency-check)", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, how, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save_fig(fig, path)


def _save_fig(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
