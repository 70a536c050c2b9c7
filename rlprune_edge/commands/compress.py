"""`rlprune-edge compress`: RL-Pruner search with a hardware-aware reward, then KD, export, report.

With no arguments: the shipped VGG-19 (width 0.25) Fashion-MNIST model, profile host-cpu, target
0.5x of the dense model's measured latency, output ./runs/compress.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.pipeline import DEFAULT_TARGET, DEVICES, REWARDS, SEARCHES, CompressConfig

_DEFAULTS = CompressConfig()  # the flags' defaults (set_defaults below): the library's, the one source


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `compress` parser."""
    p = subparsers.add_parser(
        "compress", help="prune a trained CNN until it is fast enough on a device profile",
        description="RL-Pruner search with a hardware-aware latency reward, knowledge distillation, "
        "ONNX export and a report. With no arguments runs the embedded default (VGG-19 w0.25 on "
        "Fashion-MNIST, host-cpu, target 0.5x).",
    )
    p.add_argument("--model", help="checkpoint path, model name (zoo, torchvision:NAME, timm:NAME), your own "
                   "FILE.py:FACTORY or an .onnx file (default: the shipped VGG-19 w0.25)")
    p.add_argument("--width", type=float, help="width multiplier for a model name (default %(default)s)")
    add_own_model_flags(p)
    p.add_argument("--data", help="data spec (default: the checkpoint's data, else fashion-mnist)")
    p.add_argument("--profile", help="device profile name or TOML path (default %(default)s)")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target-latency", help=f"0.5x (fraction of dense latency) or 3ms; default {DEFAULT_TARGET}")
    tgt.add_argument("--sparsity", type=float, help="fraction of prunable channels to remove, in (0, 1)")
    p.add_argument("--reward", choices=list(REWARDS), help="what the search optimises (default %(default)s)")
    p.add_argument("--out", help="output directory (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last step checkpoint")
    p.add_argument("--seed", type=int, help="seed of every stage (default %(default)s)")
    p.add_argument("--kd-epochs", type=int, help="final distillation epochs (0 = none; default %(default)s)")
    p.add_argument("--kd-images", type=int,
                   help="training images per distillation epoch (0 = the whole train split; default %(default)s)")
    p.add_argument("--kd-lr", type=float, help="distillation learning rate (default %(default)s)")
    p.add_argument("--time-budget", type=float, metavar="MIN",
                   help="minutes the run may take by its estimate: above it, every KD budget (search batches, "
                        "final KD images) is scaled down by one factor (0 = never; default %(default)s)")
    p.add_argument("--search", choices=list(SEARCHES),
                   help="plan: whole plans one-shot from the dense model, judged at equal predicted latency "
                        "(default); uniform: the uniform plan alone through the same pipeline (baseline); "
                        "paper: the step-wise RL-Pruner loop")
    _add_plan_flags(p)
    p.add_argument("--steps", type=int, help="paper search: maximum search steps (default %(default)s)")
    p.add_argument("--step-ratio", type=float,
                   help="paper search: fraction of the dense model's prunable channels removed per step (default %(default)s; the paper: 0.01)")
    p.add_argument("--candidates", type=int,
                   help=f"plan search: plans besides the uniform one, the ramps included (default {_DEFAULTS.plan.candidates}); "
                        f"paper search: actions per round, K (default {_DEFAULTS.paper.candidates}; the paper: 10)")
    p.add_argument("--rounds", type=int, help="paper search: rounds per step, R (default %(default)s; the paper: 10)")
    p.add_argument("--val-size", type=int, help="paper search: validation images scoring each candidate (default %(default)s)")
    p.add_argument("--step-kd-batches", type=int,
                   help="paper search: KD batches (of 64 images) after each step (0 = off; default %(default)s)")
    p.add_argument("--latency-variants", type=int,
                   help="pruned variants profiled to fit the latency model (default %(default)s)")
    p.add_argument("--pareto-test-size", type=int,
                   help="test images for each step's point on pareto.png (dense/final use the whole test split; default %(default)s)")
    p.add_argument("--test-images", type=int,
                   help="test images for the dense/final accuracy in the report (0 = the whole test split; default %(default)s)")
    p.add_argument("--stop-after", type=int,
                   help="stop after N search steps (paper) or rounds (plan), leaving the state (continue with --resume)")
    p.add_argument("--channel-multiple", type=int,
                   help="round every group's kept channels to this multiple and keep at least this many "
                        "(default: the profile's; 1 = any count, as in the RL-Pruner paper)")
    p.add_argument("--device", choices=list(DEVICES),
                   help="where torch computes importance, KD probes, scoring and distillation (auto: the GPU "
                        "when torch sees one; under torchrun a GPU per rank, else all ranks on the CPU with gloo). "
                        "Latency is always measured on the profile's device")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch's search and distillation (default: torch's choice); latency is "
                        "always measured with the profile's own thread settings")
    p.add_argument("--no-bundle", action="store_true", help="skip the deployable bundle in OUT/bundle")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run, **CompressConfig.flag_defaults())  # the library's defaults, the one source
    return p


def _add_plan_flags(p: argparse.ArgumentParser) -> None:
    """The plan search's options."""
    p.add_argument("--min-keep", type=float,
                   help="plan/uniform search: every group keeps at least this fraction of its channels "
                        "(and at least the channel multiple); default %(default)s")
    p.add_argument("--per-round", type=int, help="plan search: plans per round (default %(default)s)")
    p.add_argument("--screen-batches", type=int,
                   help="plan/uniform search: KD batches (of 64 images, the same for every plan) before a plan is "
                        "scored (0 = BatchNorm recalibration only); default %(default)s")
    p.add_argument("--ramps", metavar="SLOPES", help="plan search: first-round plans whose log keep "
                   "fractions fall (<0) with depth, comma-separated; default %(default)s; '' = none")
    p.add_argument("--probe-top", type=int,
                   help="plan search: best plans that get a longer KD probe beside the uniform plan (default %(default)s)")
    p.add_argument("--probe-batches", type=int,
                   help="plan search: KD batches (of 64 images) of that longer probe (0 = none); default %(default)s")
    p.add_argument("--final-batches", type=int,
                   help="plan search: more KD batches (other ones) for the re-ranked best plan and the uniform plan "
                        "before they are compared on the confirmation split (0 = none); default %(default)s")
    p.add_argument("--depth-plans", type=int,
                   help="plan search: at most this many first-round plans that remove blocks whole, widths sized "
                        "to the same latency: the 1, 2, ... least influential residual blocks (identity shortcuts), "
                        "or a plain VGG's conv units from the output end (0 = width only); default %(default)s")
    p.add_argument("--select-size", type=int,
                   help="plan search: validation images that rank plans (default %(default)s)")
    p.add_argument("--confirm-size", type=int,
                   help="plan search: other validation images on which the winner must beat uniform (default %(default)s, "
                        "at most what the selection split leaves of the validation split)")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dist() -> tuple[int, int]:
    from rlprune_edge.distill import dist_env

    return dist_env()


class _Announcer:
    """Under torchrun: rank 0 tells the other ranks once whether to join the distillation.

    Only rank 0 validates, measures latency and searches (a second process measuring at the same
    time would disturb the measurements); the other ranks wait for this message, then distil with
    it. Rank 0 always sends it, also when it stops early or fails, so nobody waits forever.
    """

    def __init__(self, world: int) -> None:
        self.world = world
        self.sent = False

    def __call__(self, payload: dict[str, Any] | None) -> None:
        if self.sent or self.world <= 1:
            return
        import torch.distributed as dist

        self.sent = True
        dist.broadcast_object_list([payload], src=0)


def _init_process_group(device: str) -> None:
    """The torchrun process group: NCCL when every local rank has its own GPU, else gloo on the CPU
    (it carries rank 0's announcement; DDP uses it for distillation)."""
    import datetime

    import torch
    import torch.distributed as dist

    from rlprune_edge.compute import process_group_backend, rank_device

    if not dist.is_initialized():
        mine = rank_device(device)
        if mine.type == "cuda":
            torch.cuda.set_device(mine)
        # the other ranks wait through rank 0's whole search
        dist.init_process_group(process_group_backend(mine), timeout=datetime.timedelta(hours=48))


def _follow_rank0(args: argparse.Namespace) -> int:
    """A rank other than 0: wait for rank 0's search, then take part in the distillation."""
    import torch
    import torch.distributed as dist

    from rlprune_edge.checkpoint import load_checkpoint, resolve_model
    from rlprune_edge.data import load_data
    from rlprune_edge.distill import distill

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    job = box[0]
    if not job:  # rank 0 stopped before distillation (bad input, --stop-after, failure): it reports why
        return 0
    data = load_data(job["data_spec"], seed=args.seed)
    torch.manual_seed(args.seed)  # as rank 0 did: a model name is then built with the same weights
    dense, info = resolve_model(job["model_spec"], width=args.width, num_classes=data.num_classes, data=data,
                                model_args=args.model_args, arch=args.arch)
    student, _ = load_checkpoint(job["searched"], arch=info.source["spec"] if info.source else None)
    torch.manual_seed(args.seed + 12345)
    kd = CompressConfig.from_namespace(args).kd  # the same flags as rank 0: the same distillation
    distill(student, dense.eval(), data, replace(kd, lr=job["kd_lr"], seed=args.seed),
            progress=False, device=job.get("device", args.device))
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the configuration from the flags, run the pipeline, print the summary.

    Under torchrun (WORLD_SIZE > 1) rank 0 runs the pipeline and all ranks distil together.
    """
    from rlprune_edge.pipeline import CompressConfig, compress

    rank, world = _dist()
    if world > 1:
        _init_process_group(args.device)
        if rank != 0:
            return _follow_rank0(args)
    announce = _Announcer(world)
    try:
        result = compress(CompressConfig.from_namespace(args), announce)
    finally:
        announce(None)  # no-op once the distillation was announced
    if result.report is not None:
        _print_summary(result.report, result.out)
    return 0


def _print_summary(report: dict, out: Path) -> None:
    from rlprune_edge.report import summary_lines

    print("\n".join(summary_lines(report)))
    s = report.get("search") or {}
    if s.get("method") in ("plan", "uniform"):
        c, u = s["chosen"], s["uniform"]
        print(f"search: {'uniform plan kept' if s['fallback_to_uniform'] else 'searched plan chosen'}; "
              f"proxy accuracy chosen {100 * c['proxy_acc']:.2f}% vs uniform {100 * u['proxy_acc']:.2f}% "
              f"({s['distinct_plans']} distinct plans, {s['search_s']:.0f}s)")
        if s.get("phase_s"):
            print("search time: " + ", ".join(f"{k} {v:.0f}s" for k, v in s["phase_s"].items()))
    bundle = report.get("bundle")
    print(f"wrote {out / 'model.pt'}, {out / 'model.onnx'}, {out / 'report.json'}, {out / 'pareto.png'}"
          + (f", {bundle}" if bundle else ""))
