"""The ceiling of issue 15's benchmark: the dense model itself given `compress`'s default fine-tune.

Every method in ``tools.bench_search`` ends with the same fine-tune (4 KD epochs over the train
split, the dense model as teacher). A pruned model can hardly end above the dense model given that
same fine-tune (its own student), so ``ceiling − better uniform baseline`` bounds what any plan can
gain over uniform at a target. The base models of the benchmark were trained for 5 epochs only, so
the fine-tune alone moves them.

    .venv/bin/python -m tools.bench_ceiling [--models resnet20:1.0,mobilenetv3_large:0.5,vgg19:0.25]
        [--seeds 0] [--out benchmarks/ceiling_dense_finetune.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from tools.bench_search import base_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def ceiling(ckpt: Path, seed: int, epochs: int = 4) -> dict[str, float]:
    """Test accuracy of the dense model before and after the product's KD fine-tune (teacher: itself)."""
    import torch

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.distill import DistillConfig, distill
    from rlprune_edge.search.env import accuracy, tensors

    data = load_data("fashion-mnist", seed=seed)
    dense, _ = load_checkpoint(ckpt)
    dense.eval()
    tx, ty = tensors(data.test)
    student = copy.deepcopy(dense)
    torch.manual_seed(seed + 12345)  # as bench_search's Torch-Pruning baseline seeds its fine-tune
    t0 = time.perf_counter()
    distill(student, dense, data, DistillConfig(epochs=epochs, seed=seed), progress=False)
    student.eval()
    return {"dense": accuracy(dense, tx, ty), "dense_after_product_finetune": accuracy(student, tx, ty),
            "kd_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20:1.0,mobilenetv3_large:0.5,vgg19:0.25")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "ceiling_dense_finetune.json"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    for item in args.models.split(","):
        name, _, w = item.partition(":")
        width = float(w or 1.0)
        ckpt = base_checkpoint(ROOT, name, width, 5, False)
        for seed in (int(s) for s in args.seeds.split(",")):
            key = f"{name}-w{width:g}/seed{seed}"
            doc[key] = ceiling(ckpt, seed)
            print(key, doc[key], flush=True)
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
