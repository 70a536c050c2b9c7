#!/usr/bin/env python3
"""Benchmark: latency-model accuracy on a profile over random pruned variants.

    .venv/bin/python tools/bench_latency_model.py --profile host-cpu \
        --models vgg19:0.5,resnet56:1,mobilenetv3_large:1 --fit-variants 16 --variants 30 --out bench.json

For each model: fit the latency model from per-layer profiles of `--fit-variants` random variants,
then measure `--variants` fresh random variants (interleaved with the dense model) and report
median / p90 absolute relative error of the predicted latency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlprune_edge.graph import prunable_groups  # noqa: E402
from rlprune_edge.latency.backend import get_backend  # noqa: E402
from rlprune_edge.latency.model import LatencyModel, check_model  # noqa: E402
from rlprune_edge.models import build_model  # noqa: E402
from rlprune_edge.profiles import load_profile  # noqa: E402


def get_pruner():
    """rlprune_edge.prune.prune (the product's pruner)."""
    from rlprune_edge.prune import prune

    return prune


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="host-cpu")
    ap.add_argument("--models", default="vgg19:0.5,resnet56:1,mobilenetv3_large:1")
    ap.add_argument("--fit-variants", type=int, default=16)
    ap.add_argument("--variants", type=int, default=30)
    ap.add_argument("--runs", type=int, default=0, help="runs per model per measurement (default: the profile's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--multiple", type=int, default=None,
                    help="keep counts are multiples of this (default: the profile's channel multiple; 1 = unaligned)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    profile = load_profile(args.profile)
    backend = get_backend(profile)
    pruner = get_pruner()
    results = {}
    for spec in args.models.split(","):
        name, _, width = spec.partition(":")
        width_f = float(width or 1.0)
        model = build_model(name, width=width_f).eval()
        example = torch.randn(1, *model.input_shape)
        groups = prunable_groups(model, example)
        t0 = time.time()
        lm = LatencyModel.fit(model, example, groups, backend, profile, n_variants=args.fit_variants, seed=args.seed,
                              pruner=pruner, runs=args.runs or None, progress=lambda s: print(s, file=sys.stderr, flush=True),
                              multiple=args.multiple)
        fit_s = time.time() - t0
        t0 = time.time()
        res = check_model(lm, model, example, groups, backend, profile, args.variants, seed=args.seed + 1000,
                          pruner=pruner, runs=args.runs or None, multiple=args.multiple)
        res.update(model=name, width=width_f, fit_s=fit_s, check_s=time.time() - t0,
                   n_groups=sum(1 for g in groups if g.prunable), unexplained=lm.meta.get("unexplained_nodes", []),
                   latency_model=lm.to_dict())
        results[spec] = res
        print(f"{spec}: dense {lm.dense_ms:.3f} ms, median |rel err| {res['median_abs_rel_error']:.3%}, "
              f"p90 {res['p90_abs_rel_error']:.3%}, max {res['max_abs_rel_error']:.3%} "
              f"(fit {fit_s:.0f}s on {args.fit_variants} variants, check {res['check_s']:.0f}s on {args.variants})",
              flush=True)
    if args.out:
        out = Path(args.out)
        fd, tmp = tempfile.mkstemp(dir=out.parent or ".", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(results, fh, indent=1)
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
