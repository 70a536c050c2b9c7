"""Does the interleaved latency ratio of two ONNX models drift within one process, and why?

    .venv/bin/python -m benchmarks.studies.drift_check DENSE.onnx PRUNED.onnx [--profile host-cpu]
        [--between train|sleep] [--seconds 20] [--repeats 2]

Measures `robust_compare` (the search's own protocol) on the pair, then spends `--seconds` either
training a VGG-19 w0.25 with torch in this process (`train`) or idle (`sleep`), then measures again.
Found on 2026-11-24: the ratio moved 0.43 -> 0.47 after 20 s of in-process torch training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rlprune_edge.latency.campaign import low_ms, robust_compare
from rlprune_edge.latency.registry import get_backend
from rlprune_edge.profiles import load_profile


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.studies.drift_check", description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("pruned")
    ap.add_argument("--profile", default="host-cpu")
    ap.add_argument("--between", choices=["train", "sleep"], default="train")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    backend = get_backend(profile)
    pair = [Path(args.dense), Path(args.pruned)]

    def show(tag: str) -> None:
        for _ in range(args.repeats):
            d, c, r = robust_compare(backend, pair, profile)
            print(f"{tag:>8}: ratio {r:.3f}  dense p20 {low_ms(d):.3f} ms  pruned p20 {low_ms(c):.3f} ms", flush=True)

    show("before")
    t0 = time.time()
    if args.between == "train":
        import torch

        from rlprune_edge.models import build_model

        model = build_model("vgg19", width=0.25)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        while time.time() - t0 < args.seconds:
            loss = model(torch.randn(64, *model.input_shape)).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        time.sleep(args.seconds)
    show("after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
