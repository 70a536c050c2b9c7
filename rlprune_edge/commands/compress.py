"""`rlprune-edge compress`: RL-Pruner search with a hardware-aware reward, then KD, export, report.

With no arguments: the shipped VGG-19 (width 0.25) Fashion-MNIST model, profile host-cpu, target
0.5x of the dense model's measured latency, output ./runs/compress.
"""

from __future__ import annotations

import argparse
import copy
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
    p.add_argument("--kd-epochs", type=int, default=2, help="final distillation epochs (0 = none)")
    p.add_argument("--kd-images", type=int, default=0,
                   help="training images per distillation epoch (0 = the whole train split)")
    p.add_argument("--kd-lr", type=float, default=None, help="distillation learning rate (default 0.01)")
    p.add_argument("--steps", type=int, default=60, help="maximum search steps")
    p.add_argument("--step-ratio", type=float, default=0.05,
                   help="fraction of the dense model's prunable channels removed per step (paper: 0.01)")
    p.add_argument("--candidates", type=int, default=3, help="actions sampled per round, K (paper: 10)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per step, R (paper: 10)")
    p.add_argument("--val-size", type=int, default=800, help="validation images scoring each candidate")
    p.add_argument("--step-kd-batches", type=int, default=100,
                   help="KD batches (of 64 images) after each step (0 = off; the paper fine-tunes every step)")
    p.add_argument("--latency-variants", type=int, default=16,
                   help="pruned variants profiled to fit the latency model (default 16)")
    p.add_argument("--pareto-test-size", type=int, default=2000,
                   help="test images for each step's point on pareto.png (dense/final use the whole test split)")
    p.add_argument("--test-images", type=int, default=0,
                   help="test images for the dense/final accuracy in the report (0 = the whole test split)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after N search steps, leaving the step checkpoint (continue with --resume)")
    p.add_argument("--channel-multiple", type=int, default=None,
                   help="round every group's kept channels to this multiple and keep at least this many "
                        "(default: the profile's; 1 = any count, as in the RL-Pruner paper)")
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


def _init_process_group() -> None:
    """The torchrun process group (gloo: it carries the announcement; DDP uses it for distillation)."""
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if _cuda() else "gloo"
        # the other ranks wait through rank 0's whole search
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=48))


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


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
            progress=False)
    return 0


def run(args: argparse.Namespace) -> int:
    """Validate everything first (nothing is written on bad input), then search, distill, export, report.

    Under torchrun (WORLD_SIZE > 1) rank 0 runs the pipeline and all ranks distil together.
    """
    rank, world = _dist()
    if world > 1:
        _init_process_group()
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
    from rlprune_edge.search.loop import SearchConfig, Target

    # --- cheap validation ------------------------------------------------------------------------
    if args.sparsity is not None:
        target = Target.sparsity(args.sparsity)
    else:
        target = Target.parse_latency(args.target_latency or DEFAULT_TARGET)
    for name, value, lo in (("--steps", args.steps, 1), ("--candidates", args.candidates, 1),
                            ("--rounds", args.rounds, 1), ("--val-size", args.val_size, 10),
                            ("--kd-epochs", args.kd_epochs, 0), ("--kd-images", args.kd_images, 0)):
        if value < lo:
            raise UserError(f"{name} {value} is too small; give at least {lo}.")
    if not 0.0 < args.step_ratio < 0.5:
        raise UserError(f"--step-ratio {args.step_ratio} is outside (0, 0.5); e.g. 0.05 removes 5% of channels per step.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}.")
    if args.channel_multiple is not None and not 1 <= args.channel_multiple <= 256:
        raise UserError(f"--channel-multiple must be between 1 and 256, got {args.channel_multiple}; "
                        "e.g. 8 for ONNX Runtime on x86, 1 for no rounding.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose a directory path.")

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from rlprune_edge.checkpoint import ensure_default_model, load_checkpoint, resolve_model
    from rlprune_edge.data import load_data
    from rlprune_edge.latency.backend import get_backend
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.search.env import low_ms, robust_compare
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
    from rlprune_edge.search.loop import allocate_keep, max_prune_keep

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
    min_keep = max_prune_keep(ch0, prunable, m)
    max_sparsity = 1.0 - sum(k for k, p in zip(min_keep, prunable, strict=True) if p) / total0

    if target.kind == "sparsity" and target.value > max_sparsity + 1e-9:
        raise UserError(f"--sparsity {target.value} is not reachable: keeping at least {m} channels per group "
                        f"(profile {profile.name} channel multiple) allows at most {max_sparsity:.2f}; lower --sparsity or "
                        "pass a smaller --channel-multiple.")

    from rlprune_edge.export import export_onnx

    scratch = Path(tempfile.mkdtemp(prefix="rlprune-compress-"))
    try:
        dense_onnx = export_onnx(copy.deepcopy(dense), scratch / "dense.onnx", tuple(info.input_shape),
                                 batch=int(profile.input.batch))
        meas = profile.measure
        dense_m = backend.measure(dense_onnx, warmup=meas.warmup, runs=meas.runs)
        dense_ms = low_ms(dense_m)
        _say(f"dense latency on {profile.name}: {dense_ms:.3f} ms (20th percentile; median "
             f"{dense_m.median_ms:.3f} ms, p90 {dense_m.p90_ms:.3f} ms)")
        t_fit = time.perf_counter()
        latency_model = _fit_latency_model(dense, example_inputs, groups, backend, profile,
                                           args.latency_variants, args.seed)
        _say(f"latency model ready ({time.perf_counter() - t_fit:.0f}s)")
        goal_ms = target.latency_goal_ms(dense_ms)
        if goal_ms is not None:
            floor_ms = float(latency_model.predict(
                {n: k for n, k, p in zip(names, min_keep, prunable, strict=True) if p}))
            verdict = "reachable" if floor_ms <= goal_ms else "NOT reachable by prediction"
            _say(f"target {goal_ms:.3f} ms; smallest allowed model (every group at {m} channels) "
                 f"predicted {floor_ms:.3f} ms -> {verdict}")
            if floor_ms > goal_ms:
                # confirm with a real measurement before refusing
                from rlprune_edge.prune import prune

                tiny = prune(dense, example_inputs, keep={n: k for n, k, p in zip(names, min_keep, prunable, strict=True) if p},
                             importance="l1", channel_multiple=1, groups=groups)
                tiny_onnx = export_onnx(tiny, scratch / "tiny.onnx", tuple(info.input_shape), batch=int(profile.input.batch))
                _, tiny_m, tiny_ratio = robust_compare(backend, [dense_onnx, tiny_onnx], profile)
                tiny_ms = low_ms(tiny_m)
                reach = tiny_ratio <= target.value if target.kind == "ratio" else tiny_ms <= goal_ms
                _say(f"smallest allowed model measured {tiny_ms:.3f} ms ({tiny_ratio:.2f}x dense)")
                if not reach:
                    raise TargetUnreachable(
                        f"target {target.describe()} is not reachable for {model_spec} on {profile.name}: even with "
                        f"every group cut to {m} channels it measures {tiny_ms:.3f} ms ({tiny_ratio:.2f}x of "
                        f"{dense_ms:.3f} ms); choose a looser --target-latency.", floor_ratio=float(tiny_ratio))
        else:
            probe_keep = allocate_keep(ch0, prunable, [c / total0 if p else 0 for c, p in zip(ch0, prunable, strict=True)],
                                       int(round(target.value * total0)), m)
            _say(f"sparsity {target.value} predicted latency "
                 f"{float(latency_model.predict({n: k for n, k, p in zip(names, probe_keep, prunable, strict=True) if p})):.3f} ms (uniform split)")

        # --- validated: from here on we write into OUT ----------------------------------------------
        state_dir = out / "search"
        if not args.resume and state_dir.exists():
            _say(f"note: starting a fresh search in {out} (the previous search state there is replaced)")
            shutil.rmtree(state_dir)
        out.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        return _run_validated(args, announce, target, data, data_spec, dense, info, model_spec, profile, backend,
                              latency_model, weights, dense_onnx, dense_ms, scratch, out, state_dir, t_start,
                              SearchConfig(step_ratio=args.step_ratio, candidates=args.candidates, rounds=args.rounds,
                                           max_steps=args.steps, seed=args.seed))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_validated(args: argparse.Namespace, announce: _Announcer, target: Any, data: Any, data_spec: str, dense: Any, info: Any,
                   model_spec: str, profile: Any, backend: Any, latency_model: Any, weights: Any,
                   dense_onnx: Path, dense_ms: float, scratch: Path, out: Path, state_dir: Path,
                   t_start: float, config: Any) -> int:
    import torch

    from rlprune_edge.checkpoint import load_checkpoint, save_checkpoint
    from rlprune_edge.distill import DistillConfig, dist_env, distill
    from rlprune_edge.export import export_onnx
    from rlprune_edge.report import plot_pareto, summary_lines, write_report
    from rlprune_edge.search.env import EnvConfig, PruneEnv, accuracy, low_ms, robust_compare, tensors
    from rlprune_edge.search.loop import run_search

    _, world = dist_env()
    env = PruneEnv(dense, info, data, profile, backend, latency_model, dense_onnx, scratch,
                   EnvConfig(val_size=args.val_size, step_kd_batches=args.step_kd_batches, seed=args.seed))
    searched_path = state_dir / "searched.pt"
    dense_fig = {"val_acc": env.evaluate(dense), "latency_ms": dense_ms,
                 "flops": env.flops(dense), "params": env.params(dense)}
    fingerprint = {"model": str(model_spec), "width": args.width, "data": data_spec, "profile": profile.name,
                   "reward": args.reward, "val_size": args.val_size, "step_kd": args.step_kd_batches,
                   "channel_multiple": env.channel_multiple}
    result = run_search(env, dense, target, weights, dense_fig, config, state_dir, resume=args.resume,
                        fingerprint=fingerprint, progress=not args.quiet, log=_say, stop_after=args.stop_after)
    if args.stop_after is not None and not result.reached and len(result.steps) >= args.stop_after:
        _say(f"stopped after {len(result.steps)} steps as asked; continue with --resume --out {out}")
        return 0
    if not result.steps:
        raise UserError("the search made no step (nothing left to prune); check --profile's channel multiple.")
    if not result.reached:
        _say(f"warning: stopped after {len(result.steps)} steps without meeting {target.describe()}")
    save_checkpoint(searched_path, result.model, info)
    kd_lr = args.kd_lr if args.kd_lr is not None else DistillConfig.lr
    # the other ranks (torchrun) wait for this, then distil together with this one
    announce({"searched": str(searched_path), "model_spec": str(model_spec), "data_spec": data_spec, "kd_lr": kd_lr})
    student, _ = load_checkpoint(searched_path)
    torch.manual_seed(args.seed + 12345)
    t_kd = time.perf_counter()
    distill(student, dense, data, DistillConfig(epochs=args.kd_epochs, lr=kd_lr, limit=args.kd_images or None,
                                                seed=args.seed), progress=not args.quiet)
    kd_s = time.perf_counter() - t_kd

    # --- final figures (the test split is used only here, after the search) -------------------------
    student.eval()
    test_x, test_y = tensors(data.subset("test", args.test_images, seed=args.seed) if args.test_images
                             else data.test)
    base_acc = accuracy(dense, test_x, test_y)
    final_acc = accuracy(student, test_x, test_y)
    pareto_x, pareto_y = tensors(data.subset("test", args.pareto_test_size, seed=args.seed))
    steps_out = []
    for s in result.steps:
        step_model = env.load_model(state_dir / s["model_file"])
        steps_out.append({k: s[k] for k in ("step", "val_acc", "predicted_latency_ms", "measured_latency_ms",
                                            "measured_ratio", "flops", "params", "sparsity", "reward",
                                            "explored", "pd_reset", "step_s")}
                         | {"test_acc": accuracy(step_model, pareto_x, pareto_y)})
    final_info = replace(info, meta={**(info.meta or {}), "compressed_from": str(model_spec), "profile": profile.name,
                                     "target": target.describe(), "test_acc": final_acc, "data": data_spec})
    save_checkpoint(out / "model.pt", student, final_info)
    export_onnx(copy.deepcopy(student), out / "model.onnx", tuple(info.input_shape), batch=int(profile.input.batch))
    base_m, final_m, speed_ratio = robust_compare(backend, [dense_onnx, out / "model.onnx"], profile)
    base_ms, final_ms = low_ms(base_m), low_ms(final_m)
    bundle = None
    if not args.no_bundle:
        try:
            from rlprune_edge.export import export_bundle

            manifest = export_bundle(student, final_info, profile, out / "bundle",
                                     precision=profile.runtime.precision, data=data, measure=False,
                                     verify_images=200, test_limit=1000, log=None)
            bundle = str(out / "bundle") if manifest is not None else None
        except UserError as exc:
            _say(f"warning: bundle not written: {exc}")
    wall = time.perf_counter() - t_start
    report = {
        "profile": profile.name,
        "target": {"kind": target.kind, "value": target.value, "text": target.describe(),
                   "goal_ms": target.latency_goal_ms(dense_ms)},
        "reward": {"preset": args.reward, "latency": weights.latency, "flops": weights.flops, "params": weights.params},
        "model": str(model_spec), "data": data_spec, "seed": args.seed,
        "base": {"test_acc": base_acc, "latency_ms": base_ms, "median_ms": base_m.median_ms, "p90_ms": base_m.p90_ms,
                 "flops": env.flops(dense), "params": env.params(dense), "val_acc": result.dense["val_acc"]},
        "final": {"test_acc": final_acc, "latency_ms": final_ms, "median_ms": final_m.median_ms, "p90_ms": final_m.p90_ms, "flops": env.flops(student),
                  "params": env.params(student)},
        "measured_speedup": 1.0 / speed_ratio if speed_ratio > 0 else None,
        "measured_ratio": speed_ratio,
        "reached": result.reached,
        "steps": steps_out,
        "search": {"step_ratio": config.step_ratio, "candidates": config.candidates, "rounds": config.rounds,
                   "val_size": args.val_size, "channel_multiple": env.channel_multiple, "search_s": result.wall_s},
        "distill": {"epochs": args.kd_epochs, "images_per_epoch": args.kd_images, "lr": kd_lr, "kd_s": kd_s,
                    "processes": world},
        "bundle": bundle,
        "wall_s": wall,
    }
    write_report(out, report)
    plot_pareto(out / "pareto.png", steps_out, report["base"], report["final"],
                title=f"{info.model} w{info.width} on {profile.name}, reward {args.reward}")
    print("\n".join(summary_lines(report)))
    print(f"wrote {out / 'model.pt'}, {out / 'model.onnx'}, {out / 'report.json'}, {out / 'pareto.png'}"
          + (f", {bundle}" if bundle else ""))
    return 0
