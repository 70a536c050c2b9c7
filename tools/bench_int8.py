"""Benchmark: INT8 (onnxruntime QDQ, per-channel) vs fp32 speed-up and accuracy on a CPU profile.

    .venv/bin/python -m tools.bench_int8 [--model CKPT] [--profile host-cpu] [--batches 1,16]
        [--runs 300] [--blocks 6] [--warmup 30] [--test-limit N] [--json OUT]

Default model: the shipped VGG-19 width 0.25 Fashion-MNIST checkpoint (`ensure_default_model()`).
For each batch size it builds a real int8 bundle with `export_bundle` (calibrated on training images),
which measures fp32 and int8 test accuracy with onnxruntime and times both graphs in interleaved
blocks in one window on the profile's backend. Prints a Markdown table and the raw figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_int8", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the shipped default model)")
    p.add_argument("--profile", default="host-cpu")
    p.add_argument("--data", default=None, help="data spec (default: the checkpoint's)")
    p.add_argument("--batches", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--runs", type=int, default=300, help="timed runs per model (split over the blocks)")
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--calib-images", type=int, default=300)
    p.add_argument("--test-limit", type=int, default=None, help="first N test images (default: all)")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.export import export_bundle
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.train import ensure_default_model

    ckpt = Path(args.model) if args.model else ensure_default_model()
    model, info = load_checkpoint(ckpt)
    data = load_data(args.data or info.meta.get("data", "fashion-mnist"))
    base = load_profile(args.profile)
    rows = []
    for batch in [int(b) for b in args.batches.split(",") if b]:
        profile = dataclasses.replace(
            base,
            input=dataclasses.replace(base.input, batch=batch),
            measure=dataclasses.replace(base.measure, runs=args.runs, blocks=args.blocks, warmup=args.warmup),
        )
        with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
            t0 = time.perf_counter()
            m = export_bundle(model, info, profile, Path(tmp) / "bundle", precision="int8", data=data,
                              calib_images=args.calib_images, test_limit=args.test_limit)
            wall = time.perf_counter() - t0
            sizes = {n: e["bytes"] for n, e in m["files"].items()}
        acc, lat = m["accuracy"], m["latency"]
        rows.append({
            "batch": batch,
            "fp32_test_acc": acc["fp32_test_acc"],
            "int8_test_acc": acc["test_acc"],
            "drop_points": acc["drop_points"],
            "test_images": acc["images"],
            "fp32_median_ms": lat["fp32_median_ms"],
            "fp32_p90_ms": lat["fp32_p90_ms"],
            "int8_median_ms": lat["median_ms"],
            "int8_p90_ms": lat["p90_ms"],
            "speedup": lat["speedup_vs_fp32"],
            "fp32_bytes": sizes.get("model_fp32.onnx"),
            "int8_bytes": sizes.get("model.onnx"),
            "how": lat["how"],
            "export_wall_s": round(wall, 1),
        })
        print(f"batch {batch}: done in {wall:.0f} s", file=sys.stderr)
    result = {
        "model": str(ckpt),
        "model_info": {"name": info.model, "width": info.width},
        "profile": base.name,
        "host": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                 "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "versions": m["versions"],
        "rows": rows,
    }
    print(f"\nINT8 vs fp32 on {base.name}: {info.model} width {info.width} ({ckpt.name})\n")
    print("| batch | fp32 acc | int8 acc | drop (pts) | fp32 median ms | int8 median ms | speed-up | size fp32 → int8 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['fp32_test_acc']:.4f} | {r['int8_test_acc']:.4f} | {r['drop_points']:.2f} | "
              f"{r['fp32_median_ms']:.3f} | {r['int8_median_ms']:.3f} | {r['speedup']:.2f}x | "
              f"{r['fp32_bytes'] / 1e6:.2f} → {r['int8_bytes'] / 1e6:.2f} MB |")
    print(f"\nload average (1 min) at the end: {result['host']['loadavg_1m']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
