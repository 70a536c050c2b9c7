"""Benchmark: latency-model accuracy on a profile over random pruned variants.

    .venv/bin/python -m tools.bench_latency_model --profile host-cpu \
        --models vgg19:0.5,resnet56:1,mobilenetv3_large:1 --fit-variants 16 --variants 30 --out bench.json

For each model: fit the latency model from per-layer profiles of `--fit-variants` random variants,
then measure `--variants` fresh random variants (interleaved with the dense model) and report
median / p90 absolute relative error of the predicted latency ("separate windows": exactly what
`rlprune-edge latency-check` does).

Then, "shared windows": the dense model, the fit variants and the check variants are measured
again together in the same interleaved windows; the model's end-to-end calibration is refitted from
the *fit* variants' ratios only and scored on the *check* variants. Both sets then see the same
machine state, so this error is the model's own, without the drift of this VM between the fit's
and the check's minutes (the check variants' ratios measured in the two ways are compared too:
that difference is the drift).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlprune_edge.graph import prunable_groups
from rlprune_edge.latency.artifacts import materialize
from rlprune_edge.latency.campaign import (
    check_model,
    fit_latency_model,
    profile_rounds,
    ratios_over_windows,
)
from rlprune_edge.latency.model import LatencyModel, error_summary
from rlprune_edge.latency.registry import get_backend
from rlprune_edge.models import build_model
from rlprune_edge.profiles import load_profile


def get_pruner():
    """rlprune_edge.pruning.prune (the product's pruner)."""
    from rlprune_edge.pruning import prune

    return prune


def shared_windows(lm: LatencyModel, model, example, check: dict, backend, profile, pruner, *, runs: int) -> dict:
    """Re-measure dense + fit variants + check variants in the same windows; recalibrate on the fit ones."""
    fit_keeps = lm.meta["calibration"]["keeps"][1:]
    check_keeps = [v["keep"] for v in check["variants"]]
    shape = tuple(example.shape[1:])
    with tempfile.TemporaryDirectory(prefix="rlprune-shared-") as tmp:
        batch = int(profile.input.batch)
        dense = materialize(backend, model, Path(tmp) / "dense.onnx", shape, batch)
        paths = [materialize(backend, pruner(model, example, k, importance="l1"), Path(tmp) / f"s{i}.onnx", shape,
                             batch) for i, k in enumerate([*fit_keeps, *check_keeps])]
        ratios, dense_ms, by_round = ratios_over_windows(backend, profile, dense, paths, runs=runs,
                                                         warmup=min(profile.measure.warmup, 20),
                                                         rounds=profile_rounds(profile))
    nf = len(fit_keeps)
    joint = LatencyModel.from_dict(lm.to_dict())
    joint.calibrate([{}, *fit_keeps], [1.0, *ratios[:nf]])
    pred = [joint.predict_ratio(k) for k in check_keeps]
    meas = ratios[nf:]
    drift = np.abs(np.asarray([v["measured_ratio"] for v in check["variants"]]) / np.asarray(meas) - 1.0)
    return {**error_summary(pred, meas), "fixed_fraction": joint.fixed_fraction, "dense_ms": dense_ms,
            "fit_ratios": ratios[:nf], "check_ratios": meas, "predicted_ratios": pred, "ratios_by_window": by_round,
            "drift_median_abs": float(np.median(drift)), "drift_p90_abs": float(np.percentile(drift, 90))}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_latency_model", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="host-cpu")
    ap.add_argument("--models", default="vgg19:0.5,resnet56:1,mobilenetv3_large:1")
    ap.add_argument("--fit-variants", type=int, default=16)
    ap.add_argument("--variants", type=int, default=30)
    ap.add_argument("--runs", type=int, default=0, help="runs per model per measurement (default: the profile's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--multiple", type=int, default=None,
                    help="keep counts are multiples of this (default: the profile's channel multiple; 1 = unaligned)")
    ap.add_argument("--no-shared-windows", dest="shared_windows", action="store_false",
                    help="skip the shared-window re-measurement (see above)")
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
        lm = fit_latency_model(model, example, groups, backend, profile, n_variants=args.fit_variants, seed=args.seed,
                              pruner=pruner, runs=args.runs or None, progress=lambda s: print(s, file=sys.stderr, flush=True),
                              multiple=args.multiple)
        fit_s = time.time() - t0
        t0 = time.time()
        res = check_model(lm, model, example, groups, backend, profile, args.variants, seed=args.seed + 1000,
                          pruner=pruner, runs=args.runs or None, multiple=args.multiple)
        res.update(model=name, width=width_f, fit_s=fit_s, check_s=time.time() - t0,
                   n_groups=sum(1 for g in groups if g.prunable), unexplained=lm.meta.get("unexplained_nodes", []),
                   latency_model=lm.to_dict())
        if args.shared_windows:
            t0 = time.time()
            res["shared_windows"] = shared_windows(lm, model, example, res, backend, profile, pruner,
                                                   runs=args.runs or int(profile.measure.runs))
            res["shared_windows"]["seconds"] = time.time() - t0
            sw = res["shared_windows"]
            print(f"{spec}: shared windows: median |rel err| {sw['median_abs_rel_error']:.3%}, "
                  f"p90 {sw['p90_abs_rel_error']:.3%}; check ratios moved by median {sw['drift_median_abs']:.3%} "
                  f"between the check's windows and these", flush=True)
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
