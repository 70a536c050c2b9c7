"""Running one cell: base training, a compress run, the uniform Torch-Pruning baseline, latency-model fidelity, and the common re-measurement."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rlprune_edge.errors import TargetUnreachable, UserError
from tools.benchmark.plan import Cell, CellUnreachable, ModelSpec, Settings, _say
from tools.benchmark.store import Results


# --- running the CLI in-process -------------------------------------------------------------------------
def _parse(argv: list[str]) -> Any:
    from rlprune_edge.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise RuntimeError(f"`rlprune-edge {' '.join(argv[:1])}` rejected the arguments {argv[1:]} "
                           f"(exit {exc.code}); the command lacks a flag this benchmark needs") from None


def run_compress(argv: list[str]) -> dict[str, Any]:
    """`compress` as a library call (``rlprune_edge.pipeline.compress``) with the options of the command
    line ``rlprune-edge compress ARGV[1:]`` (parsed by the command's own parser, so the recorded command
    is exactly what ran); returns its report."""
    from rlprune_edge.pipeline import CompressConfig, compress

    args = _parse(argv)
    try:
        result = compress(CompressConfig.from_namespace(args))
    except TargetUnreachable as exc:
        raise CellUnreachable(f"rlprune-edge compress: {exc}", exc.floor_ratio) from None
    except UserError as exc:
        raise RuntimeError(f"rlprune-edge compress: {exc}") from None
    if result.report is None:
        raise RuntimeError("rlprune-edge compress stopped before its report (--stop-after?)")
    return result.report


def run_cli(argv: list[str]) -> None:
    """Run `rlprune-edge ARGV` in this process; raise RuntimeError with the command's message on failure."""
    args = _parse(argv)
    try:
        rc = int(args.func(args) or 0)
    except TargetUnreachable as exc:
        raise CellUnreachable(f"rlprune-edge {argv[0]}: {exc}", exc.floor_ratio) from None
    except UserError as exc:
        raise RuntimeError(f"rlprune-edge {argv[0]}: {exc}") from None
    if rc != 0:
        raise RuntimeError(f"rlprune-edge {argv[0]} exited {rc}")


# --- cell runners ---------------------------------------------------------------------------------------
@dataclass
class Context:
    """What every cell runner needs."""

    settings: Settings
    work: Path  # benchmarks/ (ckpt/, runs/)
    results: Results
    quiet: bool
    keep_runs: bool

    def ckpt(self, m: ModelSpec) -> Path:
        s = self.settings
        limit = f"_l{s.train_limit}" if s.train_limit else ""
        return self.work / "ckpt" / f"{m.name}_w{m.width:g}_e{s.train_epochs}{limit}_fashion-mnist.pt"

    def rel(self, path: Path) -> str:
        """`path` relative to the output directory when inside it (results.json stays portable)."""
        try:
            return str(Path(path).resolve().relative_to(self.work.parent.resolve()))
        except ValueError:
            return str(path)

    def base_ckpt(self, m: ModelSpec) -> Path:
        rec = self.results.cells.get(f"base/{m.label}", {})
        path = rec.get("checkpoint")
        full = (self.work.parent / path) if path and not Path(path).is_absolute() else Path(path or "")
        if not path or not full.is_file():
            raise RuntimeError(f"base model of {m.label} is missing (its base cell did not finish)")
        return full


def _shipped_checkpoint(m: ModelSpec) -> Path | None:
    from rlprune_edge.checkpoint import DEFAULT_MODEL, DEFAULT_WIDTH, default_checkpoint_path

    path = default_checkpoint_path()
    if m.name == DEFAULT_MODEL and abs(m.width - DEFAULT_WIDTH) < 1e-9 and path.is_file():
        return path
    return None


def _measure_dense(ckpt: Path, ctx: Context) -> dict[str, Any]:
    """Test accuracy, FLOPs, params and dense latency (profile's measure protocol) of a checkpoint."""
    import torch

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.flops import count_flops, count_params
    from rlprune_edge.latency.artifacts import materialize
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.search.env import accuracy, tensors

    s = ctx.settings
    model, info = load_checkpoint(ckpt)
    model.eval()
    data = load_data(s.data, seed=0)
    test = data.subset("test", s.test_images, seed=0) if s.test_images else data.test
    acc = accuracy(model, *tensors(test))
    profile = load_profile(s.profile)
    backend = get_backend(profile)
    with tempfile.TemporaryDirectory(prefix="bench-dense-") as tmp:
        art = materialize(backend, model, Path(tmp) / "dense.onnx", tuple(info.input_shape), int(profile.input.batch))
        meas = backend.measure(art, warmup=int(profile.measure.warmup), runs=int(profile.measure.runs))
    with torch.no_grad():
        flops = count_flops(model, tuple(info.input_shape))
    return {"test_acc": acc, "test_images": len(test), "latency_ms": float(meas.median_ms), "p90_ms": float(meas.p90_ms),
            "flops": int(flops), "params": int(count_params(model)), "runtime": dict(meas.runtime),
            "device": dict(meas.device), "profile": profile.to_dict(), "train_meta": _slim_meta(info.meta)}


def _slim_meta(meta: dict | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k in ("epochs", "epochs_done", "val_acc", "test_acc", "wall_s", "torch_threads",
                                                             "data", "lr", "batch_size", "seed", "best_epoch")}


def _training_finished(ckpt: Path, epochs: int) -> bool:
    """True when `ckpt` records a training that ran all `epochs` (not a best-so-far save of a cut run)."""
    from rlprune_edge.checkpoint import load_checkpoint

    try:
        _, info = load_checkpoint(ckpt)
    except UserError:
        return False
    meta = info.meta or {}
    return int(meta.get("epochs_done", meta.get("epochs", 0)) or 0) >= epochs


def run_base(cell: Cell, ctx: Context) -> dict[str, Any]:
    """Train the base model with `rlprune-edge train` (or reuse the shipped / cached one) and measure it."""
    s = ctx.settings
    shipped = _shipped_checkpoint(cell.model) if s.use_shipped else None
    train_s = None
    if shipped is not None:
        ckpt, source = shipped, "shipped asset (rlprune_edge/assets)"
    else:
        ckpt = ctx.ckpt(cell.model)
        source = "trained by this benchmark with `rlprune-edge train`"
        if ckpt.is_file() and _training_finished(ckpt, s.train_epochs):
            source = ("`rlprune-edge train` with this benchmark's arguments, found finished in benchmarks/ckpt "
                      "(train time from the checkpoint's metadata)")
        else:  # absent, or a best-so-far checkpoint of an interrupted training: train afresh
            argv = ["train", "--model", cell.model.name, "--width", f"{cell.model.width:g}", "--data", s.data,
                    "--epochs", str(s.train_epochs), "--out", str(ckpt), "--seed", "0", "--save-each-epoch"]
            if s.train_limit:
                argv += ["--limit", str(s.train_limit)]
            if ctx.quiet:
                argv.append("--quiet")
            t0 = time.perf_counter()
            run_cli(argv)
            train_s = time.perf_counter() - t0
    rec = {"checkpoint": ctx.rel(ckpt), "source": source, "train_s": train_s, "train_epochs": s.train_epochs}
    rec.update(_measure_dense(ckpt, ctx))
    return rec


def _compress_argv(cell: Cell, ctx: Context, out: Path) -> list[str]:
    s = ctx.settings
    argv = ["compress", "--model", str(ctx.base_ckpt(cell.model)), "--data", s.data, "--profile", s.profile,
            "--seed", str(cell.seed), "--out", str(out), "--kd-epochs", str(s.kd_epochs), "--kd-images",
            str(s.kd_images), "--steps", str(s.steps), "--step-ratio", f"{s.step_ratio:g}", "--candidates",
            str(s.candidates), "--rounds", str(s.rounds), "--val-size", str(s.val_size), "--latency-variants",
            str(s.latency_variants), "--pareto-test-size", str(s.pareto_test_size), "--test-images",
            str(s.test_images), "--no-bundle",
            # no per-step KD: every method (the uniform baseline too) gets the same final KD budget
            "--step-kd-batches", "0",
            # this grid compares the RL-Pruner rewards in the paper's step-wise search; the default
            # plan search is compared with uniform pruning by tools.bench_search
            "--search", "paper"]
    if cell.kind == "paper":
        argv += ["--sparsity", f"{cell.sparsity:g}", "--reward", "accuracy",
                 "--channel-multiple", str(s.paper_channel_multiple)]
    else:
        argv += ["--target-latency", f"{cell.target:g}x", "--reward", cell.method]
    if ctx.quiet:
        argv.append("--quiet")
    return argv


def _from_report(rep: dict[str, Any]) -> dict[str, Any]:
    """The figures the tables need, from a compress-shaped report.json."""
    base, final = rep["base"], rep["final"]
    ratio = rep.get("measured_ratio")
    if ratio is None and rep.get("measured_speedup"):
        ratio = 1.0 / float(rep["measured_speedup"])
    return {
        "test_acc": final["test_acc"], "base_test_acc": base["test_acc"],
        "latency_ms": final["latency_ms"], "p90_ms": final.get("p90_ms"),
        "base_latency_ms": base["latency_ms"], "base_p90_ms": base.get("p90_ms"),
        "measured_ratio": ratio, "speedup": rep.get("measured_speedup"),
        "flops": final["flops"], "params": final["params"], "base_flops": base["flops"], "base_params": base["params"],
        "search_s": (rep.get("search") or {}).get("search_s"), "kd_s": (rep.get("distill") or {}).get("kd_s"),
        "compress_wall_s": rep.get("wall_s"), "reached": rep.get("reached"), "steps": len(rep.get("steps", [])),
        "final_sparsity": (rep["steps"][-1].get("sparsity") if rep.get("steps") else None),
    }


def _clean_run(out: Path, ctx: Context) -> None:
    """Drop the per-step model checkpoints of a finished run (they are only needed to resume)."""
    if ctx.keep_runs:
        return
    for p in (out / "search").glob("*.pt"):
        p.unlink(missing_ok=True)


def run_compress_cell(cell: Cell, ctx: Context) -> dict[str, Any]:
    """A Pareto (RL reward) or paper-table cell: `rlprune-edge compress`, then its report.json."""
    out = cell.run_dir(ctx.work)
    argv = _compress_argv(cell, ctx, out)
    resumable = (out / "search" / "state.json").is_file() and not (out / "report.json").is_file()
    (out / "report.json").unlink(missing_ok=True)
    if resumable:
        try:
            rep = run_compress([*argv, "--resume"])
        except RuntimeError as exc:
            _say(f"benchmark: resuming {cell.id} failed ({exc}); starting it afresh")
            rep = run_compress(argv)
    else:
        rep = run_compress(argv)
    _clean_run(out, ctx)
    return {"run_dir": ctx.rel(out), "command": ["rlprune-edge", *(ctx.rel(Path(a)) if os.path.isabs(a) else a for a in argv)]} | _from_report(rep)


def run_uniform_cell(cell: Cell, ctx: Context) -> dict[str, Any]:
    """Baseline (a): Torch-Pruning uniform Taylor pruning, ratio bisected to the measured target, same KD."""
    import torch

    from rlprune_edge.baselines import bisect_uniform, measure_vs_dense
    from rlprune_edge.checkpoint import load_checkpoint, save_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.distill import DistillConfig, distill
    from rlprune_edge.flops import count_flops, count_params
    from rlprune_edge.latency.artifacts import materialize
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.report import write_report
    from rlprune_edge.search.env import accuracy, tensors

    s = ctx.settings
    t_start = time.perf_counter()
    out = cell.run_dir(ctx.work)
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(s.profile)
    backend = get_backend(profile)
    data = load_data(s.data, seed=cell.seed)
    dense, info = load_checkpoint(ctx.base_ckpt(cell.model))
    dense.eval()
    shape = tuple(info.input_shape)
    example = torch.zeros(1, *shape)
    round_to = s.uniform_round_to or int(profile.pruning.channel_multiple)
    cx, cy = tensors(data.subset("train", 128, seed=cell.seed + 1))  # the calibration draw compress uses
    calib = [(cx[i:i + 64], cy[i:i + 64]) for i in range(0, len(cx), 64)]
    with tempfile.TemporaryDirectory(prefix="bench-uniform-", dir=out) as tmp:
        dense_art = materialize(backend, dense, Path(tmp) / "dense.onnx", shape, int(profile.input.batch))
        res = bisect_uniform(dense, example, cell.target, calib, backend, profile, dense_art, Path(tmp),
                             iterations=s.uniform_iterations, max_ratio=s.uniform_max_ratio, round_to=round_to,
                             log=None if ctx.quiet else _say, repeats=s.uniform_repeats)
        student = res.model
        torch.manual_seed(cell.seed + 12345)  # as compress does before its distillation
        t_kd = time.perf_counter()
        distill(student, dense, data, DistillConfig(epochs=s.kd_epochs, lr=DistillConfig.lr,
                                                    limit=s.kd_images or None, seed=cell.seed),
                progress=not ctx.quiet)
        kd_s = time.perf_counter() - t_kd
        student.eval()
        test = data.subset("test", s.test_images, seed=cell.seed) if s.test_images else data.test
        tx, ty = tensors(test)
        base_acc, final_acc = accuracy(dense, tx, ty), accuracy(student, tx, ty)
        save_checkpoint(out / "model.pt", student, info)
        export_onnx(copy.deepcopy(student), out / "model.onnx", shape, batch=int(profile.input.batch))
        base_m, final_m = measure_vs_dense(backend, profile, dense_art, student, shape, Path(tmp))
    ratio = float(final_m.ratio) if final_m.ratio is not None else final_m.median_ms / base_m.median_ms
    report = {
        "profile": profile.name, "method": "uniform Taylor (Torch-Pruning MetaPruner, global_pruning=False)",
        "target": {"kind": "ratio", "value": cell.target, "text": f"{cell.target:g}x dense latency"},
        "base": {"test_acc": base_acc, "latency_ms": float(base_m.median_ms), "p90_ms": float(base_m.p90_ms),
                 "flops": int(count_flops(dense, shape)), "params": int(count_params(dense))},
        "final": {"test_acc": final_acc, "latency_ms": float(final_m.median_ms), "p90_ms": float(final_m.p90_ms),
                  "flops": int(count_flops(student, shape)), "params": int(count_params(student))},
        "measured_speedup": 1.0 / ratio if ratio > 0 else None, "measured_ratio": ratio, "reached": res.reached,
        "steps": [], "pruning_ratio": res.pruning_ratio, "round_to": round_to, "probes": res.probes,
        "search": {"search_s": res.search_s, "iterations": s.uniform_iterations},
        "distill": {"epochs": s.kd_epochs, "images_per_epoch": s.kd_images, "lr": DistillConfig.lr, "kd_s": kd_s},
        "seed": cell.seed, "wall_s": time.perf_counter() - t_start,
    }
    write_report(out, report)  # compress's own report writer (checked keys, atomic, finite JSON)
    return {"run_dir": ctx.rel(out), "pruning_ratio": res.pruning_ratio, "round_to": round_to,
            "probes": len(res.probes)} | _from_report(report)


def run_fidelity(cell: Cell, ctx: Context) -> dict[str, Any]:
    """`rlprune-edge latency-check` on the base model; predicted vs measured latency of random variants."""
    s = ctx.settings
    out = cell.run_dir(ctx.work)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "latency_check.json"
    argv = ["latency-check", "--model", str(ctx.base_ckpt(cell.model)), "--profile", s.profile, "--variants",
            str(s.fidelity_variants), "--fit-variants", str(s.fidelity_fit_variants), "--seed", "0", "--json", str(js)]
    run_cli(argv)
    doc = json.loads(js.read_text())
    return {"run_dir": ctx.rel(out), "command": ["rlprune-edge", *(ctx.rel(Path(a)) if os.path.isabs(a) else a for a in argv)], "variants": len(doc["variants"]),
            "median_abs_rel_error": doc["median_abs_rel_error"], "p90_abs_rel_error": doc["p90_abs_rel_error"],
            "max_abs_rel_error": doc.get("max_abs_rel_error"), "dense_ms": doc.get("dense_ms"),
            "points": [{"predicted_ms": v["predicted_ms"], "measured_ms": v["measured_ms"]} for v in doc["variants"]]}


RUNNERS: MappingProxyType[str, Callable[[Cell, Context], dict[str, Any]]] = MappingProxyType({
    "base": run_base, "fidelity": run_fidelity, "paper": run_compress_cell,
})


def _group_key(r: dict[str, Any]) -> str:
    return f"{r['label']}@{r['target']:g}x/seed{r['seed']}"


def remeasure_common(ctx: Context, windows: int, pause_s: float) -> None:
    """Every finished Pareto group (one model, target, seed; >= 2 methods): the dense model and all the
    methods' final ONNX models measured together, `windows` interleaved windows `pause_s` apart;
    each final's ratio to dense is the median over windows. Stored in results.json under "common"
    (redone only when the group's members change)."""
    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.latency.artifacts import materialize, takes_modules
    from rlprune_edge.latency.campaign import measure_windows
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.profiles import load_profile

    common = ctx.results.doc.setdefault("common", {})
    groups: dict[str, list[str]] = {}
    for cid, r in ctx.results.cells.items():
        if r.get("kind") == "pareto" and r.get("status") == "ok":
            groups.setdefault(_group_key(r), []).append(cid)
    profile = load_profile(ctx.settings.profile)
    backend = None
    for key, ids in sorted(groups.items()):
        ids = sorted(ids)
        paths = [ctx.work.parent / ctx.results.cells[i]["run_dir"] / "model.onnx" for i in ids]
        if len(ids) < 2 or common.get(key, {}).get("members") == ids or not all(p.is_file() for p in paths):
            continue
        backend = backend or get_backend(profile)
        rec = ctx.results.cells[ids[0]]
        dense, info = load_checkpoint(ctx.base_ckpt(ModelSpec(rec["model"], float(rec["width"]))))
        _say(f"benchmark: {key}: {len(ids)} finals with the dense model in {windows} common windows")
        with tempfile.TemporaryDirectory(prefix="bench-common-") as tmp:
            dense_art = materialize(backend, dense, Path(tmp) / "dense.onnx", tuple(info.input_shape),
                                    int(profile.input.batch))
            finals = [load_checkpoint(p.with_name("model.pt"))[0].eval() for p in paths] if takes_modules(backend) else paths
            per_window = measure_windows(backend, profile, dense_art, finals, windows=windows,
                                         runs=int(profile.measure.runs), warmup=int(profile.measure.warmup),
                                         pause_s=pause_s)
        ratios = {cid: float(statistics.median(pw["ratios"][j] for pw in per_window)) for j, cid in enumerate(ids)}
        common[key] = {"members": ids, "ratios": ratios, "windows": per_window, "pause_s": pause_s,
                       "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        ctx.results.save()


def _with_common(cells: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished Pareto records, each with `common_ratio` when its group was re-measured together."""
    out = []
    for cid, r in cells.items():
        if r.get("kind") == "pareto" and r.get("status") == "ok":
            c = common.get(_group_key(r), {})
            out.append(r | {"common_ratio": c.get("ratios", {}).get(cid)})
    return out


def run_cell(cell: Cell, ctx: Context) -> dict[str, Any]:
    """Run one cell; the record always has status, wall_s, load averages and a finish time."""
    runner = run_uniform_cell if (cell.kind == "pareto" and cell.method == "uniform") else (
        run_compress_cell if cell.kind == "pareto" else RUNNERS[cell.kind])
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"kind": cell.kind, "model": cell.model.name, "width": cell.model.width,
                           "label": cell.model.label, "method": cell.method, "target": cell.target,
                           "sparsity": cell.sparsity, "seed": cell.seed}
    try:
        rec |= runner(cell, ctx)
        rec["status"] = "ok"
    except CellUnreachable as exc:
        rec |= {"status": "unreachable", "error": str(exc), "floor_ratio": exc.floor_ratio}
    except (RuntimeError, UserError) as exc:
        rec |= {"status": "failed", "error": str(exc)}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug in a pipeline stage: record it, keep benchmarking the other cells
        traceback.print_exc()
        rec |= {"status": "failed", "error": f"unexpected {type(exc).__name__}: {exc}"}
    rec |= {"wall_s": time.perf_counter() - t0, "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    return rec


# --- ETA --------------------------------------------------------------------------------------------------
def _kind_key(cell: Cell) -> tuple[str, str]:
    return (cell.kind if cell.method != "uniform" else "uniform", cell.model.label)


def estimate_s(cell: Cell, done: dict[str, Any]) -> float | None:
    """Expected duration of `cell` from finished cells of the same kind (same model first)."""
    kind, label = _kind_key(cell)
    same = [r["wall_s"] for r in done.values() if r.get("status") == "ok"
            and ((r["kind"] if r.get("method") != "uniform" else "uniform"), r["label"]) == (kind, label)]
    if same:
        return statistics.median(same)
    return None


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def eta_line(pending: Sequence[Cell], done: dict[str, Any]) -> str:
    """`ETA ~X` over the pending cells (lower bound when some kinds have no finished cell yet)."""
    est = [estimate_s(c, done) for c in pending]
    known = sum(e for e in est if e is not None)
    unknown = sum(e is None for e in est)
    return f"ETA ~{_fmt_s(known)}" + (f" + {unknown} cell(s) of kinds not timed yet" if unknown else "")
