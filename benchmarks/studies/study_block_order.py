"""Does a model's list position bias its interleaved reading? Replays three block orders side by side.

    .venv/bin/python -m benchmarks.studies.study_block_order DENSE.pt A.onnx B.onnx C.onnx [--windows 9] [--profile host-cpu]

Give A and C the same file (or the same widths): their ratio should be 1. Every window interleaves
the dense model (exported from the checkpoint) and A, B, C in 60 blocks of one untimed and 4 timed
runs, in one of three orders, the orders taking turns window by window: ``alt`` (forward, then
reversed: the order before 2026-12-07 evening), ``rot`` (a cyclic rotation) and ``wil`` (the
Williams order of ``protocol.block_orders``, used since). Prints, per order, the median ratio of
each model to dense and the per-window A/C ratio (BENCHMARKS.md, "Bring your own model").
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from rlprune_edge.board import ort_measure, protocol
from rlprune_edge.checkpoint import load_checkpoint
from rlprune_edge.latency.registry import get_backend
from rlprune_edge.onnx_io import export_onnx
from rlprune_edge.profiles import load_profile

ORDERS = {
    "alt": lambda b, n: list(range(n)) if b % 2 == 0 else list(reversed(range(n))),
    "rot": lambda b, n: [(b + k) % n for k in range(n)],
    "wil": lambda b, n: protocol.block_orders(n)[b % len(protocol.block_orders(n))],
}


def window(runners: list, order, blocks: int = 60, per_block: int = 4, settle: int = 1) -> list[float]:
    """Each model's ratio to the first: the median over blocks of the per-block median ratio."""
    medians: list[list[float]] = [[] for _ in runners]
    for b in range(blocks):
        for i in order(b, len(runners)):
            for _ in range(settle):
                runners[i]()
            medians[i].append(float(np.median(protocol.time_runs(runners[i], per_block))))
    return [float(np.median([m[b] / medians[0][b] for b in range(blocks)])) for m in medians]


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.studies.study_block_order", description=__doc__.splitlines()[0])
    ap.add_argument("dense", help="the dense checkpoint (.pt)")
    ap.add_argument("models", nargs=3, help="three ONNX models; the first and last should be the same")
    ap.add_argument("--windows", type=int, default=9)
    ap.add_argument("--profile", default="host-cpu")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    opts = get_backend(profile)._opts
    dense, info = load_checkpoint(args.dense)
    ort = ort_measure.import_ort()
    with tempfile.TemporaryDirectory() as tmp:
        d = str(export_onnx(dense.eval(), Path(tmp) / "dense.onnx", tuple(info.input_shape), batch=1))
        runners = [ort_measure._Model(ort, p, opts, None, None) for p in [d, *args.models]]
        for r in runners:
            for _ in range(20):
                r()
        names = list(ORDERS)
        res: dict[str, list[list[float]]] = {n: [] for n in names}
        for w in range(args.windows):
            for name in names[w % 3:] + names[: w % 3]:
                res[name].append(window(runners, ORDERS[name]))
    for name, rows in res.items():
        a = np.array(rows)
        print(f"{name}: median ratio to dense {np.round(np.median(a[:, 1:], 0), 3).tolist()}; first/last per window "
              f"{np.round(a[:, 1] / a[:, 3], 3).tolist()} (median {np.median(a[:, 1] / a[:, 3]):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
