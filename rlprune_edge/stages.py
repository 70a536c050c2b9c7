"""The stages of compress after set-up: search (plan, uniform or paper) → distil → export → measure → report.

:func:`rlprune_edge.pipeline.compress` validates the configuration, measures the dense model and
fits the latency model, then hands a :class:`CompressJob` to :func:`search_distil_report`, which
writes the run directory and returns the report. The default search is the plan search
(:mod:`rlprune_edge.search.plan_search`); ``uniform`` is the project's own uniform baseline through
the same stages (same importance, BN handling, measurement and KD); ``paper`` is the step-wise
RL-Pruner loop (:mod:`rlprune_edge.search.loop`).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rlprune_edge.errors import UserError


@dataclass
class CompressJob:
    """Everything the stages need, validated by the command."""

    args: Any  # the parsed flags (read-only here)
    target: Any
    data: Any
    data_spec: str
    dense: Any
    info: Any
    model_spec: str
    profile: Any
    backend: Any
    latency_model: Any
    weights: Any
    dense_artifact: Any
    dense_ms: float
    scratch: Path
    out: Path
    state_dir: Path
    t_start: float
    groups: list
    space: Any  # PlanSpace (plan/uniform searches)
    device: Any = "cpu"  # where torch computes (importance, KD probes, scoring, distillation)
    gate: Any = None  # SteadyGate: latency decisions read at the machine's steady speed


def _steady_record(gate: Any) -> dict | None:
    """What the final reading's speed gate used: sessions measured, how many ran at the steady speed."""
    if gate is None or not gate.last:
        return None
    last = gate.last
    return {"sessions": last["sessions"], "steady_sessions": last["steady"], "used_sessions": last["used"],
            "reference_dense_ms": last["reference_ms"], "session_dense_ms": last["dense_ms"],
            "tolerance": gate.tolerance}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _paper_search(job: CompressJob) -> tuple[Any, list[dict], dict, bool] | None:
    """The step-wise RL-Pruner search → (model, steps for the report, search info, reached)."""
    from rlprune_edge.search.env import PruneEnv, accuracy, tensors
    from rlprune_edge.search.loop import run_search

    a = job.args
    env = PruneEnv(job.dense, job.info, job.data, job.profile, job.backend, job.latency_model, job.dense_artifact,
                   job.scratch, replace(a.env, seed=a.seed))
    config = replace(a.paper, seed=a.seed)
    dense_fig = {"val_acc": env.evaluate(job.dense), "latency_ms": job.dense_ms,
                 "flops": env.flops(job.dense), "params": env.params(job.dense)}
    fingerprint = {"model": _model_key(job), "width": a.width, "data": job.data_spec, "profile": job.profile.name,
                   "reward": a.reward, "val_size": a.env.val_size, "step_kd": a.env.step_kd_batches,
                   "channel_multiple": env.channel_multiple}
    result = run_search(env, job.dense, job.target, job.weights, dense_fig, config, job.state_dir, resume=a.resume,
                        fingerprint=fingerprint, progress=not a.quiet, log=_say, stop_after=a.stop_after)
    if a.stop_after is not None and not result.reached and len(result.steps) >= a.stop_after:
        _say(f"stopped after {len(result.steps)} steps as asked; continue by resuming the run in {job.args.out}")
        return None
    if not result.steps:
        raise UserError("the search made no step (nothing left to prune); check the profile's channel multiple.")
    if not result.reached:
        _say(f"warning: stopped after {len(result.steps)} steps without meeting {job.target.describe()}")
    pareto_x, pareto_y = tensors(job.data.subset("test", a.pareto_test_size, seed=a.seed))
    steps = []
    for s in result.steps:
        step_model = env.load_model(job.state_dir / s["model_file"])
        steps.append({k: s[k] for k in ("step", "val_acc", "predicted_latency_ms", "measured_latency_ms",
                                        "measured_ratio", "flops", "params", "sparsity", "reward",
                                        "explored", "pd_reset", "step_s")}
                     | {"test_acc": accuracy(step_model, pareto_x, pareto_y)})
    info = {"method": "paper", "step_ratio": config.step_ratio, "candidates": config.candidates,
            "rounds": config.rounds, "val_size": a.env.val_size, "channel_multiple": env.channel_multiple,
            "channel_multiple_basis": job.profile.pruning.basis or "the profile",
            "search_s": result.wall_s, "dense_val_acc": result.dense["val_acc"]}
    return result.model, steps, info, bool(result.reached)


def _plan_search(job: CompressJob) -> tuple[Any, list[dict], dict, bool | None] | None:
    """The whole-plan search (or the uniform plan alone) → (model, steps, search info, reached)."""
    from rlprune_edge.search.plan_search import run_plan_search
    from rlprune_edge.search.proxy import PlanProxy
    from rlprune_edge.search.reward import Baseline

    a = job.args
    t0 = time.perf_counter()
    proxy = PlanProxy(job.dense, job.info, job.data, job.groups, job.profile, job.backend, job.latency_model,
                      job.dense_artifact, job.scratch,
                      replace(a.proxy, seed=a.seed, depth=a.plan.depth_plans > 0 and a.search == "plan"),
                      device=job.device, gate=job.gate)
    _say(f"importance and proxy data ready ({time.perf_counter() - t0:.0f}s): {len(proxy.sel_y)} selection, "
         f"{len(proxy.conf_y)} confirmation images")
    if proxy.blocks:
        _say("removable blocks, in the order depth plans remove them (block influence): " + ", ".join(
            f"{b} {proxy.block_influence[b]:.3f}" for b in sorted(proxy.blocks, key=proxy.removal_priority.__getitem__)))
    config = replace(a.plan, probe_top=a.plan.probe_top if a.plan.probe_batches > 0 else 0,
                     uniform_only=a.search == "uniform", seed=a.seed)
    base = Baseline(job.dense_ms, float(proxy.flops(job.dense)), float(proxy.params(job.dense)))
    fingerprint = {"model": _model_key(job), "width": a.width, "data": job.data_spec, "profile": job.profile.name,
                   "reward": a.reward, "select": a.proxy.select_size, "confirm": a.proxy.confirm_size,
                   "min_keep": a.min_keep, "channel_multiple": job.space.multiple}
    dense_keep = job.space.as_dict(job.space.full_keep())
    result = run_plan_search(proxy, job.space, job.target, job.weights, base, dense_keep, config, job.state_dir,
                             resume=a.resume, fingerprint=fingerprint, progress=not a.quiet, log=_say,
                             stop_after=a.stop_after)
    if result is None:
        _say(f"stopped after {a.stop_after} rounds as asked; continue by resuming the run in {a.out}")
        return None
    if result.reached is False:
        _say(f"warning: the chosen plan still measures over {job.target.describe()} after "
             f"{len(result.measurements)} measurements")
    steps = [{"step": r["round"] + 1, "val_acc": r["best_acc"], "predicted_latency_ms": r["best_pred_ms"],
              "measured_latency_ms": None, "flops": None, "params": None, "round_s": r["round_s"]}
             for r in result.rounds]
    dense_eval = proxy.evaluate(job.dense)
    info = {"method": job.args.search, "candidates": config.candidates, "per_round": config.per_round,
            "ramps": list(config.ramps), "depth_plans": config.depth_plans,
            "removable_blocks": {b: proxy.block_influence.get(b) for b in proxy.blocks},
            "removed_blocks": result.removed_blocks,
            "probe_top": config.probe_top, "probe_batches": config.probe_batches, "final_batches": config.final_batches,
            "screen_batches": config.screen_batches, "select_size": len(proxy.sel_y),
            "confirm_size": len(proxy.conf_y), "min_keep_fraction": a.min_keep,
            "channel_multiple": job.space.multiple, "channel_multiple_basis": job.profile.pruning.basis or "the profile",
            "search_s": result.wall_s, "phase_s": result.phase_s,
            "dense_val_acc": dense_eval.acc, "distinct_plans": sum(1 for r in result.records if "duplicate_of" not in r),
            "chosen": result.chosen, "uniform": result.uniform, "fallback_to_uniform": result.fallback_to_uniform,
            "probes": result.probes, "measurements": result.measurements, "calibration": result.calibration,
            "followers": {job.space.names[f]: job.space.names[p] for f, p in job.space.followers.items()},
            "plans": result.records}
    return result.model, steps, info, result.reached


def _model_key(job: CompressJob) -> str:
    """The model as a resumed run must find it again: the spec, and for your own class its arguments and source hash."""
    src = job.info.source
    return str(job.model_spec) if not src else f"{job.model_spec} {src['args']} {src['sha256'][:16]}"


def search_distil_report(job: CompressJob, announce: Callable[[dict | None], None]) -> dict | None:
    """Search, distil the winner from the dense model, export, measure, write the report (rank 0).

    Returns the report, or None when the search stopped early as asked (its state is in the run
    directory, to be resumed)."""
    from rlprune_edge.checkpoint import save_checkpoint
    from rlprune_edge.distill import dist_env
    from rlprune_edge.flops import count_flops, count_params
    from rlprune_edge.latency.artifacts import materialize, takes_modules
    from rlprune_edge.latency.campaign import robust_ratios
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.report import plot_pareto, write_report
    from rlprune_edge.search.env import accuracy, tensors

    a, info, profile, out = job.args, job.info, job.profile, job.out
    _, world = dist_env()
    found = _paper_search(job) if a.search == "paper" else _plan_search(job)
    if found is None:
        return None
    model, steps, search_info, reached = found
    student, kd_lr, kd_s = _distil(job, model.cpu(), announce, world)

    # --- final figures (the test split is used only here, after the search) -------------------------
    student.eval()
    test_x, test_y = tensors(job.data.subset("test", a.test_images, seed=a.seed) if a.test_images else job.data.test)
    base_acc = accuracy(job.dense, test_x, test_y)
    final_acc = accuracy(student, test_x, test_y)
    final_info = replace(info, meta={**(info.meta or {}), "compressed_from": str(job.model_spec), "profile": profile.name,
                                     "target": job.target.describe(), "test_acc": final_acc, "data": job.data_spec})
    save_checkpoint(out / "model.pt", student, final_info, dense=job.dense)
    export_onnx(copy.deepcopy(student), out / "model.onnx", tuple(info.input_shape), batch=int(profile.input.batch))
    # what the backend measures: the ONNX file just written, or (torch profiles) the module itself
    final_art = (materialize(job.backend, student, out / "model.onnx", tuple(info.input_shape), int(profile.input.batch))
                 if takes_modules(job.backend) else out / "model.onnx")
    ratios, base_ms, sessions = robust_ratios(job.backend, profile, job.dense_artifact, [final_art], gate=job.gate)
    speed_ratio = ratios[0]
    final_ms = speed_ratio * base_ms
    # the spread of single runs (median, p90) of each model alone, for the record (ratios come from above)
    spread = {name: job.backend.measure(path, warmup=int(profile.measure.warmup), runs=int(profile.measure.runs))
              for name, path in (("base", job.dense_artifact), ("final", final_art))}
    bundle = None if a.no_bundle else _bundle(job, student, final_info)
    if job.target.kind == "ratio":
        reached = speed_ratio <= job.target.value
    elif job.target.kind == "ms":
        reached = final_ms <= job.target.value
    shape = tuple(info.input_shape)
    report = {
        "profile": profile.name,
        "target": {"kind": job.target.kind, "value": job.target.value, "text": job.target.describe(),
                   "goal_ms": job.target.latency_goal_ms(job.dense_ms)},
        "reward": {"preset": a.reward, "latency": job.weights.latency, "flops": job.weights.flops,
                   "params": job.weights.params},
        "model": str(job.model_spec), "data": job.data_spec, "seed": a.seed,
        "base": {"test_acc": base_acc, "latency_ms": base_ms, "median_ms": float(spread["base"].median_ms),
                 "p90_ms": float(spread["base"].p90_ms), "flops": int(count_flops(job.dense, shape)),
                 "params": int(count_params(job.dense)), "val_acc": search_info.get("dense_val_acc")},
        "final": {"test_acc": final_acc, "latency_ms": final_ms, "median_ms": float(spread["final"].median_ms),
                  "p90_ms": float(spread["final"].p90_ms), "flops": int(count_flops(student, shape)),
                  "params": int(count_params(student))},
        "measured_speedup": 1.0 / speed_ratio if speed_ratio > 0 else None,
        "measured_ratio": speed_ratio,
        "steady_speed": _steady_record(job.gate),
        "latency_statistic": f"median over {len(sessions)} sessions of the median over windows of the per-window "
                             "ratio of interleaved block medians (dense and model in the same windows)",
        "session_ratios": [s[0] for s in sessions],
        "reached": reached,
        "steps": steps,
        "search": search_info,
        "distill": {"epochs": a.kd.epochs, "images_per_epoch": a.kd.limit or 0, "lr": kd_lr, "kd_s": kd_s,
                    "processes": world},
        "bundle": bundle,
        "wall_s": time.perf_counter() - job.t_start,
    }
    write_report(out, report)
    plot_pareto(out / "pareto.png", steps, report["base"], report["final"],
                title=f"{info.model} w{info.width} on {profile.name}, {a.search} search, reward {a.reward}")
    return report


def _distil(job: CompressJob, model: Any, announce: Callable[[dict | None], None], world: int) -> tuple[Any, float, float]:
    """Save the searched model, tell the other torchrun ranks, distil it from the dense model.

    Returns (student, learning rate, seconds)."""
    from rlprune_edge.checkpoint import load_checkpoint, reload_arch, save_checkpoint
    from rlprune_edge.distill import distill

    a = job.args
    searched_path = job.state_dir / "searched.pt"
    save_checkpoint(searched_path, model, job.info, dense=job.dense)
    kd_lr = a.kd.lr
    # the other ranks (torchrun) wait for this, then distil together with this one
    announce({"searched": str(searched_path), "model_spec": str(job.model_spec), "data_spec": job.data_spec,
              "kd_lr": kd_lr, "device": a.device})
    student, _ = load_checkpoint(searched_path, arch=reload_arch(job.info, job.dense))
    torch.manual_seed(a.seed + 12345)
    t_kd = time.perf_counter()
    distill(student, job.dense, job.data, replace(a.kd, seed=a.seed), progress=not a.quiet,
            device=a.device if world > 1 else job.device)
    return student, kd_lr, time.perf_counter() - t_kd


def _bundle(job: CompressJob, student: Any, final_info: Any) -> str | None:
    """The deployable bundle in OUT/bundle; a failure is a warning (the model and report stand)."""
    from rlprune_edge.estimate import BUNDLE_TEST, VERIFY_IMAGES
    from rlprune_edge.export import export_bundle

    try:
        manifest = export_bundle(student, final_info, job.profile, job.out / "bundle",
                                 precision=job.profile.runtime.precision, data=job.data, measure=False,
                                 verify_images=VERIFY_IMAGES, test_limit=BUNDLE_TEST, log=None)
    except UserError as exc:
        _say(f"warning: bundle not written: {exc}")
        return None
    return str(Path(job.args.out) / "bundle") if manifest is not None else None
