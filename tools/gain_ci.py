"""How sure is a benchmark cell's gain? Paired per-image statistics of the plan search against the
better uniform baseline, from the finals `python -m tools.bench_search` kept.

For every (model, level) cell with all its seeds' finals on disk, every method's `model.pt` is
evaluated on the full test split (the recomputed accuracy must equal the recorded one), and the
per-image difference plan − better uniform (the better of the project's uniform plan and
Torch-Pruning's, chosen per seed by test accuracy, as issue 15's bar does) gives:

* per seed: the gain and its paired standard error over test images;
* the mean gain over seeds, with the standard error of test-set sampling alone (per image, the
  seeds' differences averaged first, so the shared test images' correlation is counted), a 95%
  normal interval from it (how sure the same finals' mean is), and a 95% t-interval over seeds
  (how sure the search's expected gain is: new seeds also redraw the models).

Picking the better baseline after seeing the test split flatters the baseline a little; the
intervals do not correct for that.

    .venv/bin/python -m tools.gain_ci --work benchmarks/milan [--models vgg19-w0.25] [--levels aggressive]

Writes ``<work>/benchmarks/gain_ci.json`` (atomically) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t, 97.5%
METHODS = ("plan", "uniform", "tp-uniform")


def paired_gain_stats(plan: np.ndarray, better: np.ndarray) -> dict[str, Any]:
    """Statistics of the gain from per-image correctness arrays of shape (seeds, images) (0/1).

    Gains are in points (percent of the test split)."""
    plan, better = np.asarray(plan, dtype=np.float64), np.asarray(better, dtype=np.float64)
    if plan.shape != better.shape or plan.ndim != 2 or plan.shape[1] < 2:
        raise ValueError(f"need two (seeds, images) arrays of one shape, got {plan.shape} and {better.shape}")
    seeds, n = plan.shape
    diff = plan - better  # per seed, per image: -1, 0 or +1
    gains = 100.0 * diff.mean(axis=1)
    seed_se = 100.0 * diff.std(axis=1, ddof=1) / math.sqrt(n)
    per_image = diff.mean(axis=0)  # the seeds averaged first: shared test images counted once
    mean = float(gains.mean())
    test_se = float(100.0 * per_image.std(ddof=1) / math.sqrt(n))
    out: dict[str, Any] = {
        "seeds": int(seeds), "images": int(n), "gain_per_seed": [float(g) for g in gains],
        "se_per_seed": [float(s) for s in seed_se], "mean_gain": mean, "test_se": test_se,
        "test_ci95": [mean - 1.96 * test_se, mean + 1.96 * test_se],
    }
    if seeds >= 2:
        sd = float(gains.std(ddof=1))
        half = T975.get(seeds - 1, 1.96) * sd / math.sqrt(seeds)
        out.update(seed_sd=sd, seed_ci95=[mean - half, mean + half])
    return out


def _correct(model_pt: Path, x: Any, y: Any) -> np.ndarray:
    """Per test image, whether the final in `model_pt` classifies it right (0/1)."""
    import torch

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.compute import logits_of

    model, _ = load_checkpoint(model_pt)
    with torch.no_grad():
        return (logits_of(model, x).argmax(1) == y).numpy().astype(np.int8)


def cell_stats(work: Path, model: str, level: str, cells: dict[str, Any], x: Any, y: Any) -> dict[str, Any] | None:
    """The statistics of one (model, level), or None when a seed's finals are not all on disk.
    ValueError when a final on disk is not the recorded one (its test accuracy differs)."""
    runs = work / "benchmarks" / "runs" / "search"
    seeds = sorted(k.split("/seed")[1] for k in cells if k.startswith(f"{level}/seed"))
    paths = {(s, m): runs / f"{model}_{level}_seed{s}_{m}" / "model.pt" for s in seeds for m in METHODS}
    if not seeds or not all(m in cells[f"{level}/seed{s}"] and paths[s, m].is_file() for s, m in paths):
        return None  # checked before evaluating anything
    plan, better, picks = [], [], []
    for s in seeds:
        cell = cells[f"{level}/seed{s}"]
        hits = {m: _correct(paths[s, m], x, y) for m in METHODS}
        for m, h in hits.items():
            recorded = float(cell[m]["test_acc"])
            if abs(float(h.mean()) - recorded) > 1e-4:
                raise ValueError(f"{paths[s, m]}: test accuracy {h.mean():.4f} differs from the recorded "
                                 f"{recorded:.4f}; the model on disk is not the recorded final (re-run that cell).")
        pick = max(("uniform", "tp-uniform"), key=lambda m: float(cell[m]["test_acc"]))
        plan.append(hits["plan"])
        better.append(hits[pick])
        picks.append(pick)
    return {"model": model, "level": level, "better_baseline": picks, **paired_gain_stats(np.stack(plan), np.stack(better))}


def _row(r: dict[str, Any]) -> str:
    per = ", ".join(f"{g:+.2f} (SE {s:.2f})" for g, s in zip(r["gain_per_seed"], r["se_per_seed"], strict=True))
    lo, hi = r["test_ci95"]
    seed_ci = f"{r['seed_ci95'][0]:+.2f} to {r['seed_ci95'][1]:+.2f}" if "seed_ci95" in r else "n/a"
    return (f"| {r['model']}, {r['level']} | {per} | {r['mean_gain']:+.2f} | {r['test_se']:.2f} | "
            f"{lo:+.2f} to {hi:+.2f} | {seed_ci} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gain_ci", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="tools.bench_search's --work directory")
    p.add_argument("--models", nargs="*", default=None, help="model keys of search_results.json (default: all)")
    p.add_argument("--levels", nargs="*", default=None, help="levels (default: all with finals on disk)")
    a = p.parse_args(argv)
    results = a.work / "benchmarks" / "search_results.json"
    if not results.is_file():
        print(f"error: no {results}; pass the --work directory that `python -m tools.bench_search` wrote.", file=sys.stderr)
        return 2
    from rlprune_edge.data import load_data
    from rlprune_edge.fsutil import atomic_write_json
    from rlprune_edge.search.env import tensors

    data = json.loads(results.read_text())
    x, y = tensors(load_data("fashion-mnist", seed=0).test)
    rows = []
    for model, md in data["models"].items():
        if a.models and model not in a.models:
            continue
        levels = sorted({k.split("/")[0] for k in md["cells"]})
        for level in levels:
            if a.levels and level not in a.levels:
                continue
            try:
                r = cell_stats(a.work, model, level, md["cells"], x, y)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if r is None:
                print(f"{model} {level}: finals not all on disk, skipped", file=sys.stderr)
                continue
            rows.append(r)
    atomic_write_json(a.work / "benchmarks" / "gain_ci.json", {"cells": rows})
    print("| cell | gain per seed (paired SE over test images) | mean | test-set SE | 95%, same finals | 95%, over seeds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(_row(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
