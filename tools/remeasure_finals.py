"""Re-measure several final models against one dense model in common interleaved windows.

    .venv/bin/python -m tools.remeasure_finals DENSE.onnx A.onnx B.onnx ... [--profile host-cpu]
        [--windows 5] [--pause 20] [--json OUT]

Every window interleaves all models (dense first) with the profile's blocks/runs; windows are
`--pause` seconds apart, and each model's ratio to dense is reported per window and as the median
over windows. Use it to compare methods at equal measured latency: on this shared 2-core VM the
ratio of a 5 MB and a 1.3 MB model drifted from 0.38 to 0.44 within a minute even while idle
(benchmarks/studies/drift_check.py), so finals measured in different windows are not comparable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from rlprune_edge.fsutil import atomic_write_json
from rlprune_edge.latency.campaign import measure_windows
from rlprune_edge.latency.registry import get_backend
from rlprune_edge.profiles import load_profile


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.remeasure_finals", description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--profile", default="host-cpu")
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--pause", type=float, default=20.0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    backend = get_backend(profile)
    per_window = measure_windows(backend, profile, Path(args.dense), [Path(m) for m in args.models],
                                 windows=args.windows, runs=int(profile.measure.runs),
                                 warmup=int(profile.measure.warmup), pause_s=args.pause)
    for w, pw in enumerate(per_window):
        print(f"window {w + 1}: dense {pw['dense_median_ms']:.3f} ms; " + ", ".join(f"{r:.3f}" for r in pw["ratios"]))
    medians = [statistics.median(pw["ratios"][i] for pw in per_window) for i in range(len(args.models))]
    for m, r in zip(args.models, medians, strict=True):
        lo = min(pw["ratios"][args.models.index(m)] for pw in per_window)
        hi = max(pw["ratios"][args.models.index(m)] for pw in per_window)
        print(f"{m}: median ratio {r:.3f} (windows {lo:.3f}-{hi:.3f})")
    if args.json:
        atomic_write_json(args.json, {"dense": args.dense, "models": args.models, "windows": per_window,
                                      "median_ratios": medians, "profile": profile.name})
    return 0


if __name__ == "__main__":
    sys.exit(main())
