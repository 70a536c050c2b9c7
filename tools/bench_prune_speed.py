"""Benchmark: graph + Taylor scores + prune of a CIFAR VGG-19 to 40% of its channels.

Prints median and p90 over --runs repetitions of each stage (the machine is shared, so the spread
matters). The target (< 1 s) excludes the calibration forward/backward: the Taylor scoring work
besides it is measured as (scores with a 1-image calibration batch) - (1-image forward/backward),
where the subtracted term is small enough for the difference to be stable. Also times Torch-Pruning's own path (trace a deep
copy, prune group by group) and checks that both paths give identical weights.

    .venv/bin/python -m tools.bench_prune_speed [--model vgg19] [--width 1.0] [--keep 0.4] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch


def _timed(fn: Callable[[], object], runs: int) -> tuple[list[float], object]:
    samples, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return samples, result


def _summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_s": statistics.median(s), "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))], "min_s": s[0]}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench_prune_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg19")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--keep", type=float, default=0.4, help="fraction of each group's channels kept")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--calib-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default; 1 is steadier on a shared box)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.importance import channel_scores
    from rlprune_edge.models import build_model
    from rlprune_edge.pruning import _copy_and_shrink, _prune_via_depgraph, removal_plan, select_channels

    torch.manual_seed(0)
    model = build_model(args.model, width=args.width, num_classes=10).eval()
    shape = tuple(getattr(model, "input_shape", (3, 32, 32)))
    example = torch.randn(1, *shape)
    calib = [(torch.randn(args.calib_batch, *shape), torch.randint(0, 10, (args.calib_batch,)))]

    # warm-up (first-call allocations, lazy imports)
    groups = prunable_groups(model, example)
    channel_scores(model, example, groups, method="taylor", calib=calib)

    t_graph, groups = _timed(lambda: prunable_groups(model, example), args.runs)
    keep = {g.name: max(1, round(args.keep * g.channels)) for g in groups if g.prunable}

    def calib_pass(batches: list) -> None:
        x, y = batches[0]
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
        torch.autograd.grad(loss, [p for p in model.parameters()])

    one = [(calib[0][0][:1], calib[0][1][:1])]
    slow_runs = max(3, args.runs // 2)
    t_calib, _ = _timed(lambda: calib_pass(calib), slow_runs)
    t_taylor, scores = _timed(lambda: channel_scores(model, example, groups, method="taylor", calib=calib), slow_runs)
    # the scoring work besides the forward/backward, measured where the forward/backward is small
    t_calib1, _ = _timed(lambda: calib_pass(one), args.runs)
    t_taylor1, _ = _timed(lambda: channel_scores(model, example, groups, method="taylor", calib=one), args.runs)
    t_l1, _ = _timed(lambda: channel_scores(model, example, groups, method="l1"), args.runs)
    removed = select_channels(groups, keep, scores)
    t_select, _ = _timed(lambda: removal_plan(groups, select_channels(groups, keep, scores)), args.runs)
    t_prune, pruned = _timed(
        lambda: _copy_and_shrink(model, removal_plan(groups, select_channels(groups, keep, scores))), args.runs
    )
    t_ref, ref = _timed(lambda: _prune_via_depgraph(model, example, removed), max(1, args.runs // 2))

    same = pruned.state_dict().keys() == ref.state_dict().keys() and all(
        torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    n0 = sum(p.numel() for p in model.parameters())
    n1 = sum(p.numel() for p in pruned.parameters())
    med = {k: _summary(v) for k, v in {
        "graph (prunable_groups)": t_graph,
        f"calibration fwd+bwd (1 batch of {args.calib_batch})": t_calib,
        f"taylor scores incl. calibration ({args.calib_batch} images)": t_taylor,
        "calibration fwd+bwd (1 image)": t_calib1,
        "taylor scores incl. calibration (1 image)": t_taylor1,
        "l1 scores": t_l1,
        "channel selection + plan": t_select,
        "prune (copy + shrink, plan path)": t_prune,
        "prune via Torch-Pruning (trace copy + group.prune)": t_ref,
    }.items()}
    taylor_excl = max(
        0.0, med["taylor scores incl. calibration (1 image)"]["median_s"] - med["calibration fwd+bwd (1 image)"]["median_s"]
    )
    total = med["graph (prunable_groups)"]["median_s"] + taylor_excl + med["prune (copy + shrink, plan path)"]["median_s"]
    result = {
        "model": args.model, "width": args.width, "keep_fraction": args.keep, "runs": args.runs,
        "threads": torch.get_num_threads(), "groups": len(groups),
        "prunable_groups": sum(g.prunable for g in groups),
        "params_before": n0, "params_after": n1, "identical_to_torch_pruning_path": bool(same),
        "stages": med, "taylor_scoring_excl_calibration_s": taylor_excl,
        "total_excl_calibration_s": total,
        "search_step_s": med["prune (copy + shrink, plan path)"]["median_s"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.model} width {args.width}: {result['prunable_groups']} prunable groups, keep {args.keep:.0%} "
          f"of each; params {n0:,} -> {n1:,}; torch threads {result['threads']}; {args.runs} runs")
    for name, s in med.items():
        print(f"  {name:<52} median {s['median_s'] * 1000:8.1f} ms   p90 {s['p90_s'] * 1000:8.1f} ms")
    print(f"  {'taylor scoring excl. calibration (1-image difference)':<52} median {taylor_excl * 1000:8.1f} ms")
    print(f"  {'TOTAL graph + scores + prune, excl. calibration':<52} median {total * 1000:8.1f} ms")
    print(f"  plan path identical to Torch-Pruning path: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
