"""Do per-layer times add up? `bench --per-layer` sums against the end-to-end time, per model and profile.

For torchvision mobilenet_v2 and resnet18 (64x64 inputs, 10 classes, random weights) and the shipped
VGG-19 w0.25 (32x32), on each profile: the sum of the per-layer own times (kernel sum) and of the
per-layer wall times (own time + the gap since the previous layer: dispatch, functional ops), each
over the median end-to-end time of the same profiled runs. Issue 16's bar: within 0.85-1.10.

    .venv/bin/python -m tools.bench_per_layer --profiles host-cpu cpu-torch --json benchmarks/per_layer.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

MODELS = ("torchvision:mobilenet_v2", "torchvision:resnet18", "vgg19-w0.25")


def build(name: str):
    """(model, input shape) for one benchmark model."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "vgg19-w0.25":
        from rlprune_edge.checkpoint import load_checkpoint
        from rlprune_edge.train import ensure_default_model

        model, info = load_checkpoint(ensure_default_model(progress=False))
        return model.eval(), tuple(info.input_shape)
    ctor = getattr(torchvision.models, name.split(":", 1)[1])
    return ctor(num_classes=10).eval(), (3, 64, 64)


def measure(name: str, profile_name: str, runs: int) -> dict:
    """One model on one profile: kernel and wall sums over the profiled end-to-end median."""
    from rlprune_edge.latency.artifacts import materialize
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.profiles import load_profile

    profile = load_profile(profile_name)
    backend = get_backend(profile)
    model, shape = build(name)
    with tempfile.TemporaryDirectory(prefix="bench-perlayer-") as tmp:
        art = materialize(backend, model, Path(tmp) / "m.onnx", shape, int(profile.input.batch))
        m = backend.measure(art, warmup=int(profile.measure.warmup), runs=runs, per_layer=True)
    ref = m.per_layer_e2e_median_ms or m.median_ms
    wall = m.per_layer_wall_sum_ms
    return {"model": name, "profile": profile.name, "input_shape": list(shape), "batch": int(profile.input.batch),
            "layers": len(m.per_layer), "median_ms": m.median_ms, "p90_ms": m.p90_ms,
            "profiled_e2e_median_ms": ref, "kernel_sum_ms": m.per_layer_sum_ms, "wall_sum_ms": wall,
            "kernel_sum_ratio": m.per_layer_sum_ms / ref, "wall_sum_ratio": None if wall is None else wall / ref,
            "runtime": m.runtime, "device": {k: m.device.get(k) for k in ("cpu_model", "gpu", "cpu_count")}}


def table(rows: list[dict]) -> str:
    """Markdown table of the results."""
    out = ["| model | profile | layers | end-to-end median ms (profiled runs) | kernel sum / e2e | wall sum / e2e |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        wall = f"{r['wall_sum_ratio']:.2f}" if r["wall_sum_ratio"] is not None else "-"
        out.append(f"| {r['model']} | {r['profile']} | {r['layers']} | {r['profiled_e2e_median_ms']:.3f} | "
                   f"{r['kernel_sum_ratio']:.2f} | {wall} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_per_layer", description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=["host-cpu", "cpu-torch"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--runs", type=int, default=200, help="profiled runs per model (default 200)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    rows = []
    for prof in args.profiles:
        for name in args.models:
            r = measure(name, prof, args.runs)
            rows.append(r)
            print(f"{name:26} {prof:14} kernel sum {r['kernel_sum_ratio']:.2f}  wall sum "
                  f"{(r['wall_sum_ratio'] or float('nan')):.2f}  of {r['profiled_e2e_median_ms']:.3f} ms", flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
