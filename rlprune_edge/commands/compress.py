"""`rlprune-edge compress`: RL-Pruner search with a hardware-aware reward, then KD, export, report.

With no arguments: the shipped VGG-19 (width 0.25) Fashion-MNIST model, profile host-cpu, target
0.5x of the dense model's measured latency, output ./runs/compress.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlprune_edge.errors import TargetUnreachable, UserError

DEFAULT_OUT = "runs/compress"
DEFAULT_TARGET = "0.5x"
# a floor model measuring above this fraction of dense is "not measurably faster" (interleaved-ratio noise is ±2-3%)
FLAT_FLOOR_RATIO = 0.95


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `compress` parser."""
    p = subparsers.add_parser(
        "compress", help="prune a trained CNN until it is fast enough on a device profile",
        description="RL-Pruner search with a hardware-aware latency reward, knowledge distillation, "
        "ONNX export and a report. With no arguments runs the embedded default (VGG-19 w0.25 on "
        "Fashion-MNIST, host-cpu, target 0.5x).",
    )
    p.add_argument("--model", default=None, help="checkpoint path or model name (default: the shipped VGG-19 w0.25)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier for a model name")
    p.add_argument("--data", default=None, help="data spec (default: the checkpoint's data, else fashion-mnist)")
    p.add_argument("--profile", default="host-cpu", help="device profile name or TOML path")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--target-latency", default=None, help="0.5x (fraction of dense latency) or 3ms; default 0.5x")
    tgt.add_argument("--sparsity", type=float, default=None, help="fraction of prunable channels to remove, in (0, 1)")
    p.add_argument("--reward", default="latency", choices=["latency", "accuracy", "flops", "params"])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last step checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kd-epochs", type=int, default=4, help="final distillation epochs (0 = none; default 4)")
    p.add_argument("--kd-images", type=int, default=0,
                   help="training images per distillation epoch (0 = the whole train split)")
    p.add_argument("--kd-lr", type=float, default=None, help="distillation learning rate (default 0.01)")
    p.add_argument("--search", default="plan", choices=["plan", "uniform", "paper"],
                   help="plan: whole plans one-shot from the dense model, judged at equal predicted latency "
                        "(default); uniform: the uniform plan alone through the same pipeline (baseline); "
                        "paper: the step-wise RL-Pruner loop")
    p.add_argument("--min-keep", type=float, default=0.1,
                   help="plan/uniform search: every group keeps at least this fraction of its channels "
                        "(and at least the channel multiple); default 0.1")
    p.add_argument("--per-round", type=int, default=8, help="plan search: plans per round (default 8)")
    p.add_argument("--screen-batches", type=int, default=20,
                   help="plan/uniform search: KD batches (of 64 images, the same for every plan) before a plan is "
                        "scored (0 = BatchNorm recalibration only); default 20")
    p.add_argument("--probe-top", type=int, default=3,
                   help="plan search: best plans that get a longer KD probe beside the uniform plan (default 3)")
    p.add_argument("--probe-batches", type=int, default=100,
                   help="plan search: KD batches (of 64 images) of that longer probe (0 = no probes); default 100")
    p.add_argument("--select-size", type=int, default=2000,
                   help="plan search: validation images that rank plans (default 2000)")
    p.add_argument("--confirm-size", type=int, default=2000,
                   help="plan search: other validation images on which the winner must beat uniform (default 2000)")
    p.add_argument("--steps", type=int, default=60, help="paper search: maximum search steps")
    p.add_argument("--step-ratio", type=float, default=0.05,
                   help="paper search: fraction of the dense model's prunable channels removed per step (paper: 0.01)")
    p.add_argument("--candidates", type=int, default=None,
                   help="plan search: plans sampled besides the uniform one (default 64); paper search: actions "
                        "per round, K (default 3; the paper: 10)")
    p.add_argument("--rounds", type=int, default=None, help="paper search: rounds per step, R (default 2; the paper: 10)")
    p.add_argument("--val-size", type=int, default=800, help="paper search: validation images scoring each candidate")
    p.add_argument("--step-kd-batches", type=int, default=100,
                   help="paper search: KD batches (of 64 images) after each step (0 = off)")
    p.add_argument("--latency-variants", type=int, default=16,
                   help="pruned variants profiled to fit the latency model (default 16)")
    p.add_argument("--pareto-test-size", type=int, default=2000,
                   help="test images for each step's point on pareto.png (dense/final use the whole test split)")
    p.add_argument("--test-images", type=int, default=0,
                   help="test images for the dense/final accuracy in the report (0 = the whole test split)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after N search steps (paper) or rounds (plan), leaving the state (continue with --resume)")
    p.add_argument("--channel-multiple", type=int, default=None,
                   help="round every group's kept channels to this multiple and keep at least this many "
                        "(default: the profile's; 1 = any count, as in the RL-Pruner paper)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where torch computes importance, KD probes, scoring and distillation (auto: the GPU "
                        "when torch sees one; under torchrun a GPU per rank, else all ranks on the CPU with gloo). "
                        "Latency is always measured on the profile's device")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch's search and distillation (default: torch's choice); latency is "
                        "always measured with the profile's own thread settings")
    p.add_argument("--no-bundle", action="store_true", help="skip the deployable bundle in OUT/bundle")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fit_latency_model(dense: Any, example_inputs: Any, groups: list, backend: Any, profile: Any,
                       n_variants: int, seed: int) -> Any:
    """The latency model for (profile, architecture), from the cache when one was fitted before."""
    from rlprune_edge.latency import model as lm_mod

    try:
        from rlprune_edge.latency import cache as cache_mod
    except ImportError:
        cache_mod = None
    fn = getattr(cache_mod, "get_or_fit", None) if cache_mod is not None else None
    if fn is not None:
        return fn(dense, example_inputs, groups, backend, profile, n_variants=n_variants, seed=seed)
    return lm_mod.LatencyModel.fit(dense, example_inputs, groups, backend, profile, n_variants=n_variants, seed=seed)


def _groups_table(groups: list) -> str:
    rows = [f"  {'group':28}{'channels':>9}  {'prunable':8}  note"]
    for g in groups:
        rows.append(f"  {g.name[:28]:28}{g.channels:>9}  {'yes' if g.prunable else 'no':8}  "
                    f"{'' if g.prunable else (g.reason or '')}")
    return "\n".join(rows)


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
    from rlprune_edge.distill import DistillConfig, distill

    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    job = box[0]
    if not job:  # rank 0 stopped before distillation (bad input, --stop-after, failure): it reports why
        return 0
    data = load_data(job["data_spec"], seed=args.seed)
    torch.manual_seed(args.seed)  # as rank 0 did: a model name is then built with the same weights
    dense, _ = resolve_model(job["model_spec"], width=args.width, num_classes=data.num_classes, data=data)
    student, _ = load_checkpoint(job["searched"])
    torch.manual_seed(args.seed + 12345)
    distill(student, dense.eval(), data, DistillConfig(epochs=args.kd_epochs, lr=job["kd_lr"],
                                                        limit=args.kd_images or None, seed=args.seed),
            progress=False, device=job.get("device", args.device))
    return 0


def run(args: argparse.Namespace) -> int:
    """Validate everything first (nothing is written on bad input), then search, distill, export, report.

    Under torchrun (WORLD_SIZE > 1) rank 0 runs the pipeline and all ranks distil together.
    """
    rank, world = _dist()
    if world > 1:
        _init_process_group(args.device)
        if rank != 0:
            return _follow_rank0(args)
    announce = _Announcer(world)
    try:
        return _run_rank0(args, announce)
    finally:
        announce(None)  # no-op once the distillation was announced


def _run_rank0(args: argparse.Namespace, announce: _Announcer) -> int:  # noqa: C901 - reads best top to bottom
    """The pipeline (rank 0, or the only process)."""
    t_start = time.perf_counter()
    from rlprune_edge.search.loop import Target

    # --- cheap validation ------------------------------------------------------------------------
    if args.sparsity is not None:
        target = Target.sparsity(args.sparsity)
    else:
        target = Target.parse_latency(args.target_latency or DEFAULT_TARGET)
    for name, value, lo in (("--steps", args.steps, 1), ("--candidates", args.candidates, 1),
                            ("--rounds", args.rounds, 1), ("--val-size", args.val_size, 10),
                            ("--kd-epochs", args.kd_epochs, 0), ("--kd-images", args.kd_images, 0),
                            ("--per-round", args.per_round, 1), ("--probe-top", args.probe_top, 0),
                            ("--probe-batches", args.probe_batches, 0), ("--screen-batches", args.screen_batches, 0), ("--select-size", args.select_size, 10),
                            ("--confirm-size", args.confirm_size, 10)):
        if value is not None and value < lo:
            raise UserError(f"{name} {value} is too small; give at least {lo}.")
    for name, value, lo, hi in (("--kd-lr", args.kd_lr, 0.0, 10.0), ("--width", args.width, 0.0, 64.0)):
        if value is not None and not (math.isfinite(value) and lo < value <= hi):
            raise UserError(f"{name} {value} is not a number in ({lo:g}, {hi:g}]; e.g. --kd-lr 0.01, --width 0.5.")
    if args.seed < 0 or args.seed >= 2**31:
        raise UserError(f"--seed {args.seed} is outside [0, 2**31); give a non-negative integer, e.g. --seed 0.")
    if args.latency_variants < 2:
        raise UserError(f"--latency-variants {args.latency_variants} is too small; the latency model needs at least 2 "
                        "profiled variants (default 16).")
    for name, value in (("--pareto-test-size", args.pareto_test_size), ("--test-images", args.test_images)):
        if value < 0:
            raise UserError(f"{name} {value} is negative; give 0 (all) or a positive number of images.")
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after {args.stop_after} is too small; give at least 1 (or leave it out).")
    if not (0.0 <= args.min_keep < 1.0):
        raise UserError(f"--min-keep {args.min_keep} is outside [0, 1); give the smallest fraction of a group's "
                        "channels to keep, e.g. 0.1.")
    if not 0.0 < args.step_ratio < 0.5:
        raise UserError(f"--step-ratio {args.step_ratio} is outside (0, 0.5); e.g. 0.05 removes 5% of channels per step.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}.")
    if args.channel_multiple is not None and not 1 <= args.channel_multiple <= 256:
        raise UserError(f"--channel-multiple must be between 1 and 256, got {args.channel_multiple}; "
                        "e.g. 8 for ONNX Runtime on x86, 1 for no rounding.")
    from rlprune_edge.rundir import RunDir

    # refuses a foreign or busy --out at once; a fresh run into an old run directory works beside it
    run_dir = RunDir.open(args.out, resume=args.resume)
    try:
        code = _validated_run(args, announce, target, run_dir, t_start)
    except BaseException:
        run_dir.abandon()
        raise
    run_dir.commit()
    return code


def _validated_run(args: argparse.Namespace, announce: _Announcer, target: Any, run_dir: Any,  # noqa: C901
                   t_start: float) -> int:
    """Everything after the cheap checks: load, measure, search, distil, report (into run_dir.work)."""
    out = run_dir.work
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from rlprune_edge.compute import resolve_device

    device = resolve_device(args.device)

    from rlprune_edge.checkpoint import ensure_default_model, load_checkpoint, resolve_model
    from rlprune_edge.data import load_data
    from rlprune_edge.latency.backend import get_backend
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.search.env import low_ms
    from rlprune_edge.search.reward import weights_for

    profile = load_profile(args.profile)
    if args.channel_multiple is not None:
        profile = replace(profile, pruning=replace(profile.pruning, channel_multiple=args.channel_multiple))
    model_spec = args.model or str(ensure_default_model(progress=not args.quiet))
    info_data = None
    if Path(model_spec).is_file():
        _, probe = load_checkpoint(model_spec)
        info_data = (probe.meta or {}).get("data")
    data_spec = args.data or info_data or "fashion-mnist"
    data = load_data(data_spec, seed=args.seed)
    torch.manual_seed(args.seed)  # a model *name* is built with random init: make it the same on --resume
    dense, info = resolve_model(model_spec, width=args.width, num_classes=data.num_classes, data=data)
    if tuple(info.input_shape) != tuple(data.input_shape):
        raise UserError(f"model {model_spec} takes inputs {tuple(info.input_shape)} but data {data_spec} gives "
                        f"{tuple(data.input_shape)}; use a model trained on this dataset.")
    dense = dense.eval()
    torch.manual_seed(args.seed)
    example_inputs = torch.zeros(1, *info.input_shape)
    backend = get_backend(profile)
    weights = weights_for(args.reward, profile)

    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.search.loop import max_prune_keep
    from rlprune_edge.search.plan import PlanSpace, follower_groups

    groups = prunable_groups(dense, example_inputs)
    _say(f"compress: model {model_spec} ({info.model}, width {info.width}), data {data_spec}, "
         f"profile {profile.name}, target {target.describe()}, reward {args.reward}")
    _say("groups:\n" + _groups_table(groups))
    names = [g.name for g in groups]
    ch0 = [int(g.channels) for g in groups]
    prunable = [bool(g.prunable) for g in groups]
    if not any(prunable):
        raise UserError(f"model {model_spec} has no prunable channel group; nothing to compress.")
    m = max(1, int(profile.pruning.channel_multiple))
    total0 = sum(c for c, p in zip(ch0, prunable, strict=True) if p)
    space = PlanSpace.build(names, ch0, prunable, m, min_fraction=args.min_keep,
                            followers=follower_groups(dense, example_inputs, groups))
    if args.search == "paper":
        min_keep = max_prune_keep(ch0, prunable, m)
        bound_text, bound_flag = f"every group cut to {m} channels", "pass a smaller --channel-multiple"
    else:
        min_keep = space.floor_keep()
        bound_text = f"every group cut to max({m} channels, {args.min_keep:g} of its width)"
        bound_flag = "lower --min-keep (or pass a smaller --channel-multiple)"
        if space.followers:
            _say("followers (keep their producer's fraction): "
                 + ", ".join(f"{names[f]} <- {names[p]}" for f, p in space.followers.items()))
    max_sparsity = 1.0 - sum(k for k, p in zip(min_keep, prunable, strict=True) if p) / total0

    if target.kind == "sparsity" and target.value > max_sparsity + 1e-9:
        raise UserError(f"--sparsity {target.value} is not reachable: with {bound_text} (profile {profile.name}) "
                        f"at most {max_sparsity:.2f} can be removed; lower --sparsity or {bound_flag}.")

    from rlprune_edge.latency.artifacts import materialize

    scratch = Path(tempfile.mkdtemp(prefix="rlprune-compress-"))
    try:
        # what the profile's backend measures: an ONNX file, or the module itself (torch profiles)
        dense_artifact = materialize(backend, dense, scratch / "dense.onnx", tuple(info.input_shape), int(profile.input.batch))
        meas = profile.measure
        dense_m = backend.measure(dense_artifact, warmup=meas.warmup, runs=meas.runs)
        dense_ms = low_ms(dense_m)
        _say(f"dense latency on {profile.name}: {dense_ms:.3f} ms (20th percentile; median "
             f"{dense_m.median_ms:.3f} ms, p90 {dense_m.p90_ms:.3f} ms)")
        t_fit = time.perf_counter()
        latency_model = _fit_latency_model(dense, example_inputs, groups, backend, profile,
                                           args.latency_variants, args.seed)
        _say(f"latency model ready ({time.perf_counter() - t_fit:.0f}s)")
        goal_ms = target.latency_goal_ms(dense_ms)
        if goal_ms is not None and goal_ms >= dense_ms:
            raise UserError(f"target {target.describe()} is not below the dense model's {dense_ms:.3f} ms on "
                            f"{profile.name}: there is nothing to prune for it; give a smaller --target-latency "
                            "(e.g. 0.5x).")
        if goal_ms is not None:
            # on this run's scale: the cached model may have been fitted in another machine state
            scale = dense_ms / float(latency_model.predict({n: c for n, c, p in zip(names, ch0, prunable, strict=True) if p}))
            floor_ms = scale * float(latency_model.predict(
                {n: k for n, k, p in zip(names, min_keep, prunable, strict=True) if p}))
            verdict = "reachable" if floor_ms <= goal_ms else "NOT reachable by prediction"
            _say(f"target {goal_ms:.3f} ms; smallest allowed model ({bound_text}) "
                 f"predicted {floor_ms:.3f} ms ({floor_ms / dense_ms:.2f}x) -> {verdict}")
            if floor_ms > goal_ms:
                # confirm with a real measurement before refusing
                from rlprune_edge.pruning import prune

                tiny = prune(dense, example_inputs, keep={n: k for n, k, p in zip(names, min_keep, prunable, strict=True) if p},
                             importance="l1", channel_multiple=1, groups=groups)
                tiny_onnx = materialize(backend, tiny, scratch / "tiny.onnx", tuple(info.input_shape), int(profile.input.batch))
                from rlprune_edge.latency.windows import robust_ratios

                (tiny_ratio,), window_dense_ms, _ = robust_ratios(backend, profile, dense_artifact, [tiny_onnx])
                tiny_ms = tiny_ratio * window_dense_ms
                reach = tiny_ratio <= target.value if target.kind == "ratio" else tiny_ms <= goal_ms
                _say(f"smallest allowed model measured {tiny_ms:.3f} ms ({tiny_ratio:.2f}x dense)")
                if not reach and tiny_ratio > FLAT_FLOOR_RATIO:
                    raise TargetUnreachable(
                        f"pruning cannot make {model_spec} faster on {profile.name}: the dense model measures "
                        f"{window_dense_ms:.3f} ms and the smallest allowed model ({bound_text}) {tiny_ms:.3f} ms "
                        f"({tiny_ratio:.2f}x) in the same windows, so the time is in launch/runtime overhead, not in "
                        f"the layers; raise [input] batch, time CUDA graph replay (cuda_graphs = true on torch "
                        f"profiles) or use another runtime (TensorRT, ONNX Runtime).", floor_ratio=float(tiny_ratio))
                if not reach:
                    raise TargetUnreachable(
                        f"target {target.describe()} is not reachable for {model_spec} on {profile.name}: even with "
                        f"{bound_text} it measures {tiny_ms:.3f} ms against the dense model's {window_dense_ms:.3f} ms "
                        f"in the same windows ({tiny_ratio:.2f}x); "
                        f"choose a looser --target-latency or {bound_flag}.", floor_ratio=float(tiny_ratio))
        else:
            probe_keep, _ = space.size_to_channels(space.uniform_prefs(), int(round((1 - target.value) * total0)))
            _say(f"sparsity {target.value} predicted latency "
                 f"{float(latency_model.predict(space.as_dict(probe_keep))):.3f} ms (uniform plan)")

        # --- validated: from here on we write into the run directory ----------------------------------
        state_dir = out / "search"
        if run_dir.replaces:
            _say(f"note: {run_dir.out} holds an earlier run; this run works beside it and replaces it only when "
                 "it ends normally")
        state_dir.mkdir(parents=True, exist_ok=True)
        from rlprune_edge.pipeline import CompressJob, search_distil_report

        return search_distil_report(CompressJob(
            args=args, target=target, data=data, data_spec=data_spec, dense=dense, info=info, model_spec=model_spec,
            profile=profile, backend=backend, latency_model=latency_model, weights=weights, dense_artifact=dense_artifact,
            dense_ms=dense_ms, scratch=scratch, out=out, state_dir=state_dir, t_start=t_start, groups=groups,
            space=space, device=device), announce)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

