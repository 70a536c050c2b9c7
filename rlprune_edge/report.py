"""`report.json` and `pareto.png` of a compress run (written atomically)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlprune_edge.fsutil import atomic_path, atomic_write_json

REQUIRED_KEYS = ("profile", "target", "base", "final", "measured_speedup", "steps", "wall_s")
STEP_KEYS = ("step", "val_acc", "predicted_latency_ms", "measured_latency_ms", "flops", "params")




def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (JSON has no NaN; a bare NaN breaks readers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented, strictly valid JSON atomically (non-finite numbers become null)."""
    path = Path(path)
    atomic_write_json(path, finite_json(obj))
    return path


def write_report(out_dir: str | os.PathLike, report: dict) -> Path:
    """Validate the required keys and write `out_dir/report.json`."""
    missing = [k for k in REQUIRED_KEYS if k not in report]
    if missing:
        raise ValueError(f"report lacks {missing}")
    for s in report["steps"]:
        lacking = [k for k in STEP_KEYS if k not in s]
        if lacking:
            raise ValueError(f"report step lacks {lacking}")
    return write_json(Path(out_dir) / "report.json", report)


def plot_pareto(
    path: str | os.PathLike,
    steps: Sequence[dict],
    base: dict,
    final: dict,
    title: str = "",
) -> Path:
    """Test accuracy vs measured latency of every step's model; dense and final marked (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6.4, 4.4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    def x_of(s: dict) -> float | None:
        # steps were measured in other windows than dense/final: place them by their measured
        # ratio to dense (interleaved, same window) times the dense latency shown here
        if s.get("measured_ratio") is not None:
            return float(s["measured_ratio"]) * float(base["latency_ms"])
        return s.get("measured_latency_ms")

    pts = [(x_of(s), s["test_acc"], s["step"]) for s in steps
           if s.get("test_acc") is not None and x_of(s) is not None]
    if pts:
        xs, ys, labels = zip(*pts, strict=True)
        ax.plot(xs, [100 * y for y in ys], "o-", color="tab:blue", alpha=0.7, label="search steps (before KD)")
        for x, y, label in pts:
            ax.annotate(str(label), (x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.plot([base["latency_ms"]], [100 * base["test_acc"]], "s", color="black", ms=9, label="dense")
    ax.plot([final["latency_ms"]], [100 * final["test_acc"]], "*", color="tab:red", ms=14, label="final (after KD)")
    ax.set_xlabel("measured latency (ms; steps: measured ratio to dense × dense)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def _target_text(target: Any) -> str:
    return str(target.get("text", target)) if isinstance(target, dict) else str(target)


def summary_lines(report: dict) -> list[str]:
    """A one-screen human summary of a report."""
    b, f = report["base"], report["final"]
    lines = [
        f"profile {report['profile']}   target {_target_text(report['target'])}   wall {report['wall_s']:.0f}s",
        f"{'':10}{'test acc':>10}{'latency ms':>12}{'MFLOPs':>10}{'params':>11}",
        f"{'dense':10}{100 * b['test_acc']:>9.2f}%{b['latency_ms']:>12.3f}{b['flops'] / 1e6:>10.2f}{b['params']:>11,}",
        f"{'pruned':10}{100 * f['test_acc']:>9.2f}%{f['latency_ms']:>12.3f}{f['flops'] / 1e6:>10.2f}{f['params']:>11,}",
        f"measured speedup {report['measured_speedup']:.2f}x   accuracy change "
        f"{100 * (f['test_acc'] - b['test_acc']):+.2f} points   steps {len(report['steps'])}",
    ]
    return lines
