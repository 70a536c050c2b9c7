#!/usr/bin/env python3
"""Benchmarks: RL-Pruner rewards vs uniform Torch-Pruning on measured latency; writes BENCHMARKS.md.

One run trains (or reuses) the base models, then runs every cell of three studies the way a user
would (``rlprune-edge train / compress / latency-check``), stores each cell's figures in
``benchmarks/results.json`` as soon as it finishes, and renders ``BENCHMARKS.md`` plus PNG plots
from everything in that file:

* Pareto comparison at measured-latency targets (fraction of dense): (a) uniform per-layer Taylor
  pruning with Torch-Pruning, ratio bisected to the target, (b) accuracy reward, (c) FLOPs reward,
  (d) latency reward -- all with the same distillation budget and seeds.
* Paper-style table: sparsity 20/40/60/80 % with the accuracy reward.
* Latency-model fidelity from ``rlprune-edge latency-check``.

Resumable: cells already in results.json (same settings) are skipped, so rerunning the same command
after an interruption continues where it stopped. ``--quick`` is a minutes-long smoke run on tiny
settings (used by tests/test_benchmark_quick.py).

    .venv/bin/python tools/benchmark.py [--quick] [--models vgg19:0.25,resnet56:0.5,mobilenetv3_large:0.5]
        [--targets 0.7,0.5,0.3] [--seeds 0] [--sparsities 0.2,0.4,0.6,0.8] [--out-dir .] [--list]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rlprune_edge.errors import TargetUnreachable, UserError

FINISHED = ("ok", "unreachable")  # cell statuses that count as results (not retried)


class CellUnreachable(RuntimeError):
    """`compress` refused the cell's target as below the model's measured floor: a result, not a failure."""

    def __init__(self, message: str, floor_ratio: float | None) -> None:
        super().__init__(message)
        self.floor_ratio = floor_ratio

RESULTS_VERSION = 1
METHODS = ("uniform", "accuracy", "flops", "latency")
METHOD_LABELS = MappingProxyType({
    "uniform": "(a) uniform Taylor, Torch-Pruning",
    "accuracy": "(b) RL-Pruner, accuracy reward",
    "flops": "(c) RL-Pruner, FLOPs reward",
    "latency": "(d) RL-Pruner, latency reward (ours)",
})
METHOD_STYLE = MappingProxyType({
    "uniform": ("tab:gray", "s"), "accuracy": ("tab:blue", "o"), "flops": ("tab:orange", "^"),
    "latency": ("tab:red", "D"),
})
MET_TOLERANCE = 1.05  # a final measurement within 5 % of the target counts as meeting it (measurement noise)
FULL_DEFAULTS = MappingProxyType({
    "models": "vgg19:0.25,resnet56:0.5,mobilenetv3_large:0.5", "targets": "0.7,0.5,0.3", "seeds": "0",
    "sparsities": "0.2,0.4,0.6,0.8", "profile": "host-cpu", "train_epochs": 5, "train_limit": 0,
    "kd_epochs": 1, "kd_images": 12000, "steps": 60, "step_ratio": 0.06, "candidates": 4, "rounds": 2,
    "val_size": 1000, "latency_variants": 16, "test_images": 0, "pareto_test_size": 2000,
    "fidelity_variants": 30, "fidelity_fit_variants": 16, "uniform_iterations": 6, "uniform_max_ratio": 0.9,
    "uniform_repeats": 3, "torch_threads": 1, "paper_channel_multiple": 1,
})
# Finals of one (model, target, seed) re-measured together with their dense model: windows, pause s
# between windows. Cells run minutes apart; on this VM a large/small model ratio drifts by up to ~15%
# within a minute, so only finals measured in the same windows are compared at "equal latency".
COMMON_WINDOWS = (5, 10.0)
QUICK_COMMON_WINDOWS = (2, 0.0)
QUICK_DEFAULTS = MappingProxyType({
    "models": "vgg11:0.125", "targets": "0.7", "seeds": "0", "sparsities": "0.4", "profile": "",
    "train_epochs": 1, "train_limit": 2000, "kd_epochs": 1, "kd_images": 256, "steps": 8, "step_ratio": 0.15,
    "candidates": 2, "rounds": 1, "val_size": 100, "latency_variants": 2, "test_images": 300,
    "pareto_test_size": 100, "fidelity_variants": 3, "fidelity_fit_variants": 2, "uniform_iterations": 3,
    "uniform_max_ratio": 0.9, "uniform_repeats": 1, "torch_threads": 1, "paper_channel_multiple": 1,
})
# --quick measures on this profile (this machine's ONNX Runtime CPU, few runs) instead of host-cpu.
QUICK_PROFILE = """name = "bench-quick-cpu"
description = "tools/benchmark.py --quick: ONNX Runtime CPU on this machine, few runs (smoke test only)"
[runtime]
name = "onnxruntime"
provider = "CPUExecutionProvider"
threads = 1
inter_op_threads = 1
graph_optimization = "all"
precision = "fp32"
[input]
batch = 1
[pruning]
channel_multiple = 4
[measure]
warmup = 3
runs = 10
blocks = 2
[connection]
kind = "local"
[reward]
latency = 1.0
"""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- settings and cells -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Everything that changes the figures of a cell (stored in results.json; a rerun must match)."""

    quick: bool
    profile: str
    data: str
    train_epochs: int
    train_limit: int
    kd_epochs: int
    kd_images: int
    steps: int
    step_ratio: float
    candidates: int
    rounds: int
    val_size: int
    latency_variants: int
    test_images: int
    pareto_test_size: int
    fidelity_variants: int
    fidelity_fit_variants: int
    uniform_iterations: int
    uniform_max_ratio: float
    uniform_round_to: int
    uniform_repeats: int
    torch_threads: int
    use_shipped: bool
    paper_channel_multiple: int  # paper-table cells: compress --channel-multiple (1 = no rounding, as the paper)


@dataclass(frozen=True)
class ModelSpec:
    """A zoo model name and width."""

    name: str
    width: float

    @property
    def label(self) -> str:
        return f"{self.name}-w{self.width:g}"


@dataclass(frozen=True)
class Cell:
    """One unit of work whose figures are stored under `id` in results.json."""

    id: str
    kind: str  # base | fidelity | pareto | paper
    model: ModelSpec
    method: str = ""
    target: float = 0.0
    sparsity: float = 0.0
    seed: int = 0

    def run_dir(self, work: Path) -> Path:
        return work / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.id)


def _floats(text: str, what: str, lo: float, hi: float) -> list[float]:
    try:
        vals = [float(t.strip().rstrip("xX")) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of numbers; e.g. 0.7,0.5,0.3.") from None
    if not vals or any(not lo < v < hi for v in vals):
        raise UserError(f"--{what} {text!r}: every value must lie in ({lo:g}, {hi:g}); e.g. 0.7,0.5,0.3.")
    return vals


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of integers; e.g. 0,1,2.") from None
    if not vals or any(v < 0 for v in vals):
        raise UserError(f"--{what} {text!r} must list non-negative integers; e.g. 0,1,2.")
    return vals


def parse_models(text: str) -> list[ModelSpec]:
    """`vgg19:0.25,resnet56:0.5` -> model specs; UserError on unknown names or bad widths."""
    from rlprune_edge.models import ZOO_NAMES

    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, w = item.partition(":")
        if name not in ZOO_NAMES:
            raise UserError(f"--models: unknown model {name!r} in {text!r}; use NAME:WIDTH with NAME one of "
                            f"{', '.join(ZOO_NAMES)}.")
        try:
            width = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"--models: width {w!r} of {name} is not a number; write e.g. {name}:0.25.") from None
        if not (math.isfinite(width) and width > 0):
            raise UserError(f"--models: width {w!r} of {name} must be positive; write e.g. {name}:0.25.")
        out.append(ModelSpec(name, width))
    if not out:
        raise UserError(f"--models {text!r} names no model; write e.g. vgg19:0.25,resnet56:0.5.")
    return out


def plan_cells(models: Sequence[ModelSpec], targets: Sequence[float], seeds: Sequence[int],
               sparsities: Sequence[float], methods: Sequence[str]) -> list[Cell]:
    """Every cell of the benchmark, in run order (per model: base, fidelity, Pareto, paper table)."""
    cells: list[Cell] = []
    for m in models:
        cells.append(Cell(f"base/{m.label}", "base", m))
        cells.append(Cell(f"fidelity/{m.label}", "fidelity", m))
        for t in targets:
            for method in methods:
                for s in seeds:
                    cells.append(Cell(f"pareto/{m.label}/{t:g}x/{method}/seed{s}", "pareto", m, method=method,
                                      target=t, seed=s))
        for sp in sparsities:
            for s in seeds:
                cells.append(Cell(f"paper/{m.label}/s{sp:g}/seed{s}", "paper", m, method="accuracy", sparsity=sp,
                                  seed=s))
    return cells


# --- results file ---------------------------------------------------------------------------------------
class Results:
    """benchmarks/results.json: settings, run log and one record per finished cell (saved atomically)."""

    def __init__(self, path: Path, settings: Settings, fresh: bool) -> None:
        self.path = path
        self.doc: dict[str, Any] = {"version": RESULTS_VERSION, "settings": asdict(settings), "runs": [], "cells": {}}
        if path.exists() and not fresh:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{path} is not readable JSON ({exc}); move it away or pass --fresh.") from None
            if not isinstance(old, dict) or old.get("version") != RESULTS_VERSION:
                raise UserError(f"{path} is not a version-{RESULTS_VERSION} benchmark results file; move it away "
                                "or pass --fresh.")
            diff = {k: (v, old.get("settings", {}).get(k)) for k, v in asdict(settings).items()
                    if old.get("settings", {}).get(k) != v}
            if diff:
                shown = ", ".join(f"{k}={new!r} (file has {was!r})" for k, (new, was) in sorted(diff.items()))
                raise UserError(f"{path} holds results from other settings ({shown}); rerun with the same settings "
                                "to resume, or pass --fresh to start over.")
            self.doc = old

    @property
    def cells(self) -> dict[str, Any]:
        return self.doc["cells"]

    def done(self, cell_id: str) -> bool:
        return self.cells.get(cell_id, {}).get("status") in FINISHED

    def put(self, cell_id: str, record: dict[str, Any]) -> None:
        self.cells[cell_id] = record
        self.save()

    def save(self) -> None:
        _write_text(self.path, json.dumps(self.doc, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Write atomically: temp file in the destination directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- running the CLI in-process -------------------------------------------------------------------------
def run_cli(argv: list[str]) -> None:
    """Run `rlprune-edge ARGV` in this process; raise RuntimeError with the command's message on failure."""
    from rlprune_edge.cli import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        raise RuntimeError(f"`rlprune-edge {' '.join(argv[:1])}` rejected the arguments {argv[1:]} "
                           f"(exit {exc.code}); the command lacks a flag this benchmark needs") from None
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
    from rlprune_edge.latency.backend import get_backend
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
            # plan search is compared with uniform pruning by tools/bench_search.py
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
            run_cli([*argv, "--resume"])
        except RuntimeError as exc:
            _say(f"benchmark: resuming {cell.id} failed ({exc}); starting it afresh")
            run_cli(argv)
    else:
        run_cli(argv)
    rep = json.loads((out / "report.json").read_text())
    _clean_run(out, ctx)
    return {"run_dir": ctx.rel(out), "command": ["rlprune-edge", *(ctx.rel(Path(a)) if os.path.isabs(a) else a for a in argv)]} | _from_report(rep)


def run_uniform_cell(cell: Cell, ctx: Context) -> dict[str, Any]:
    """Baseline (a): Torch-Pruning uniform Taylor pruning, ratio bisected to the measured target, same KD."""
    import torch

    from rlprune_edge.baselines import bisect_uniform, measure_vs_dense
    from rlprune_edge.checkpoint import load_checkpoint, save_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.distill import DistillConfig, distill
    from rlprune_edge.export import export_onnx
    from rlprune_edge.flops import count_flops, count_params
    from rlprune_edge.latency.artifacts import materialize
    from rlprune_edge.latency.backend import get_backend
    from rlprune_edge.profiles import load_profile
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
    _write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
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
    from rlprune_edge.latency.backend import get_backend
    from rlprune_edge.latency.windows import measure_windows
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
                       "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
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
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
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


# --- rendering ----------------------------------------------------------------------------------------------
def _mean(vals: Sequence[float]) -> float:
    return float(statistics.fmean(vals))


def _fmt_stat(vals: Sequence[float], fmt: str, scale: float = 1.0) -> str:
    vals = [float(v) * scale for v in vals if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{format(_mean(vals), fmt)} ± {format(statistics.stdev(vals), fmt.replace('+', ''))}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _ok(cells: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in cells.values() if r.get("kind") == kind and r.get("status") == "ok"]


def _labels(cells: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in cells.values():
        if r["label"] not in seen:
            seen.append(r["label"])
    return seen


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _machine_line(base: dict[str, Any]) -> str:
    dev = base.get("device", {})
    return (f"{dev.get('cpu_model', platform.processor() or 'unknown CPU')}, {dev.get('cpu_count', os.cpu_count())} "
            f"logical cores ({dev.get('system', platform.system())} {dev.get('kernel', platform.release())}, "
            f"python {dev.get('python', platform.python_version())})")


def _measured_how(settings: dict[str, Any], base: dict[str, Any]) -> str:
    prof = base.get("profile", {})
    rt, meas, inp = prof.get("runtime", {}), prof.get("measure", {}), prof.get("input", {})
    run_rt = base.get("runtime", {})
    return (f"profile `{prof.get('name', settings['profile'])}`: {run_rt.get('name', rt.get('name'))} "
            f"{run_rt.get('version', '')} {rt.get('provider', '')}, {rt.get('threads')} intra-op thread(s), graph "
            f"optimisation {rt.get('graph_optimization')}, {rt.get('precision')}, batch {inp.get('batch')}; "
            f"{meas.get('warmup')} warm-up + {meas.get('runs')} timed runs per model in {meas.get('blocks')} "
            f"blocks interleaved with the dense model (median and p90 of the samples)")


def _pareto_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for method in METHODS:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        met = all(r["measured_ratio"] is not None and r["measured_ratio"] <= r["target"] * MET_TOLERANCE for r in rs)
        out.append([
            METHOD_LABELS[method],
            _fmt_stat([r["test_acc"] for r in rs], ".2f", 100),
            _fmt_stat([r["test_acc"] - r["base_test_acc"] for r in rs], "+.2f", 100),
            _fmt_stat([r["latency_ms"] for r in rs], ".3f"), _fmt_stat([r["p90_ms"] for r in rs], ".3f"),
            _fmt_stat([r["measured_ratio"] for r in rs], ".3f"),
            _fmt_stat([r["common_ratio"] for r in rs], ".3f") if all(r.get("common_ratio") for r in rs) else "—",
            _fmt_stat([r["speedup"] for r in rs], ".2f") + "×",
            _fmt_stat([r["flops"] for r in rs], ".2f", 1e-6), _fmt_stat([r["params"] for r in rs], ",.0f"),
            _fmt_stat([r["search_s"] for r in rs], ".0f"), _fmt_stat([r["wall_s"] for r in rs], ".0f"),
            ("yes" if met else "**no**") + ("" if all(r.get("reached", True) for r in rs) else " (not met during the search)"),
            str(len(rs)),
        ])
    return out


def _unreachable(cells: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return [r for r in cells.values() if r.get("kind") == "pareto" and r.get("label") == label
            and r.get("status") == "unreachable"]


def _unreachable_lines(refused: list[dict[str, Any]]) -> list[str]:
    """One line per method whose `compress` refused the target (the measured floor it reported)."""
    out = []
    for method in METHODS:
        g = [r for r in refused if r["method"] == method]
        if g:
            floors = [r["floor_ratio"] for r in g if r.get("floor_ratio") is not None]
            floor = f"{min(floors):.2f}–{max(floors):.2f}× dense" if floors else "unknown"
            out.append(f"- {METHOD_LABELS[method]}: target not reachable; `compress` refused it with exit 2 after "
                       f"measuring the smallest model the profile allows (every group at the channel multiple): "
                       f"{floor} (seeds {', '.join(str(r['seed']) for r in g)}).")
    return out + ([""] if out else [])


PARETO_HEADER = ("method", "test acc %", "Δ acc (pts)", "latency median ms", "latency p90 ms", "latency / dense",
                 "latency / dense, common windows", "speed-up", "MFLOPs", "params", "search s", "cell wall s", "target met", "seeds")
PAPER_HEADER = ("sparsity", "base acc %", "pruned acc %", "Δ acc (pts)", "FLOPs reduction %", "params reduction %",
                "measured speed-up", "seeds")
FIDELITY_HEADER = ("model", "variants", "median abs rel err %", "p90 abs rel err %", "max abs rel err %",
                   "dense ms (fit)", "fit variants")


def _reading(pareto: list[dict[str, Any]]) -> list[str]:
    """Generated reading: per (model, target), who reaches the best accuracy among methods meeting the target."""
    lines: list[str] = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in pareto:
        groups.setdefault((r["label"], r["target"]), []).append(r)
    wins = ties = total = 0
    for (label, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        by: dict[str, dict[str, float]] = {}
        # latency compared in the common windows when the group was re-measured together (see remeasure_common)
        key = "common_ratio" if all(r.get("common_ratio") for r in rs) else "measured_ratio"
        for method in METHODS:
            m = [r for r in rs if r["method"] == method]
            if m:
                accs = [r["test_acc"] * 100 for r in m]
                by[method] = {"acc": _mean(accs), "ratio": _mean([r[key] for r in m]),
                              "mflops": _mean([r["flops"] for r in m]) / 1e6,
                              # squared standard error of the mean accuracy (0 with one seed)
                              "se2": statistics.variance(accs) / len(accs) if len(accs) > 1 else 0.0}
        met = {k: v for k, v in by.items() if v["ratio"] <= target * MET_TOLERANCE}
        if "latency" not in by:
            continue
        total += 1
        ours = by["latency"]
        desc = f"{ours['acc']:.2f}% at {ours['ratio']:.2f}× dense, {ours['mflops']:.2f} MFLOPs"
        others = {k: v for k, v in met.items() if k != "latency"}
        if "latency" not in met:
            lines.append(f"- {label} @ {target:g}×: the latency reward did **not** meet the target ({desc}).")
            continue
        if not others:
            lines.append(f"- {label} @ {target:g}×: only the latency reward met the target ({desc}).")
            wins += 1
            continue
        best_k, best = max(others.items(), key=lambda kv: kv[1]["acc"])
        gap = ours["acc"] - best["acc"]
        # a win needs equal or lower measured latency too (within the tolerance): Pareto dominance
        ours_not_slower = ours["ratio"] <= best["ratio"] * MET_TOLERANCE
        other_not_slower = best["ratio"] <= ours["ratio"] * MET_TOLERANCE
        se = math.sqrt(ours["se2"] + best["se2"])  # standard error of the gap (several seeds)
        if se > 0 and abs(gap) <= se and (ours_not_slower or other_not_slower):
            verdict = f"ties within seed noise (gap smaller than its standard error, {se:.2f} pts)"
            ties += 1
        elif gap >= 0 and ours_not_slower:
            verdict = "wins" if gap > 0 else "ties"
            wins += gap > 0
            ties += gap == 0
        elif gap <= 0 and other_not_slower:
            verdict = "loses"
        else:
            verdict = "is not comparable (a trade-off, not equal latency)"
        lines.append(f"- {label} @ {target:g}×: latency reward {verdict}, {gap:+.2f} pts ({desc}) against the most "
                     f"accurate other method meeting the target, {METHOD_LABELS[best_k]} ({best['acc']:.2f}% at "
                     f"{best['ratio']:.2f}×, {best['mflops']:.2f} MFLOPs).")
    lines += _paired_lines(groups)
    lines += _why_lines(pareto)
    head = [f"The latency reward was at least as accurate at no higher measured latency (within "
            f"{MET_TOLERANCE:.2f}×) than every other method meeting the target in {wins} of {total} (model, target) "
            "settings" + (f" and tied in {ties}" if ties else "") + "."] if total else []
    return head + lines


def _paired_lines(groups: dict[tuple[str, float], list[dict[str, Any]]]) -> list[str]:
    """Per (model, target) with several seeds: the latency reward against each other RL reward, seed by seed.

    A seed is a win when the latency reward is at least as accurate at no higher measured latency (within
    MET_TOLERANCE), a loss when it is less accurate and the other is no slower, else a trade-off. Uses the
    common-window ratios when the group has them. Pairing by seed removes the seed-to-seed spread that the
    means carry (same base model, same validation draw per seed)."""
    lines: list[str] = []
    for (label, target), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        key = "common_ratio" if all(r.get("common_ratio") for r in rs) else "measured_ratio"
        ours = {r["seed"]: r for r in rs if r["method"] == "latency"}
        parts = []
        for method in ("accuracy", "flops"):
            other = {r["seed"]: r for r in rs if r["method"] == method}
            seeds = sorted(set(ours) & set(other))
            if len(seeds) < 2:
                continue
            win = loss = trade = 0
            gaps = []
            for sd in seeds:
                a, b = ours[sd], other[sd]
                gap = (a["test_acc"] - b["test_acc"]) * 100
                gaps.append(gap)
                if gap >= 0 and a[key] <= b[key] * MET_TOLERANCE:
                    win += 1
                elif gap < 0 and b[key] <= a[key] * MET_TOLERANCE:
                    loss += 1
                else:
                    trade += 1
            parts.append(f"against {METHOD_LABELS[method]}: {win} win(s), {loss} loss(es), {trade} trade-off(s) over "
                         f"{len(seeds)} seeds, mean paired gap {_mean(gaps):+.2f} pts "
                         f"(per seed {', '.join(f'{g:+.1f}' for g in gaps)})")
        if parts:
            lines.append(f"- {label} @ {target:g}×, seed by seed (win = at least as accurate at no higher measured "
                         f"latency within {MET_TOLERANCE:.2f}×): " + "; ".join(parts) + ".")
    return lines


def _why_lines(pareto: list[dict[str, Any]]) -> list[str]:
    """Per model: how closely measured latency followed FLOPs across its finals (room for a latency reward)."""
    out = []
    for label in sorted({r["label"] for r in pareto}):
        rs = [r for r in pareto if r["label"] == label and r.get("base_flops")]
        lat = [r["common_ratio"] or r["measured_ratio"] for r in rs]
        fl = [r["flops"] / r["base_flops"] for r in rs]
        if len(rs) < 3 or len(set(fl)) < 2 or len(set(lat)) < 2:
            continue
        corr = statistics.correlation(fl, lat)
        gaps = [a - b for a, b in zip(lat, fl, strict=True)]
        out.append(f"- Why, {label}: across its {len(rs)} finals, latency / dense vs FLOPs / dense has Pearson "
                   f"r = {corr:.3f}; latency fraction minus FLOPs fraction spans {min(gaps):+.2f} to {max(gaps):+.2f}. "
                   "The closer r is to 1 and the narrower that span, the less a latency reward can gain over a "
                   "FLOPs reward on this runtime: removing FLOPs already removes time.")
    return out


def _pareto_plot(path: Path, label: str, rows: list[dict[str, Any]], base: dict[str, Any] | None, how: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5.2))
    ax = fig.add_subplot(111)
    for method in METHODS:
        pts: dict[float, list[dict[str, Any]]] = {}
        for r in rows:
            if r["method"] == method:
                pts.setdefault(r["target"], []).append(r)
        if not pts:
            continue
        xs = [_mean([r["measured_ratio"] for r in v]) for v in pts.values()]
        ys = [_mean([r["test_acc"] for r in v]) * 100 for v in pts.values()]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        color, marker = METHOD_STYLE[method]
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker=marker, color=color, label=METHOD_LABELS[method])
    dense_acc = rows[0]["base_test_acc"] * 100 if rows else None
    if dense_acc is not None:
        ax.plot([1.0], [dense_acc], marker="*", markersize=14, color="black", linestyle="none", label="dense")
    for t in sorted({r["target"] for r in rows}):
        ax.axvline(t, color="0.8", linestyle=":", linewidth=1)
    ax.set_xlabel("measured latency / dense (median, interleaved blocks)")
    ax.set_ylabel("test accuracy (%)")
    if base and base.get("latency_ms"):
        dense_ms = float(base["latency_ms"])
        top = ax.secondary_xaxis("top", functions=(lambda r: r * dense_ms, lambda ms: ms / dense_ms))
        top.set_xlabel(f"≈ latency in ms (dense {dense_ms:.3f} ms, base-model measurement)")
    ax.set_title(f"{label}: test accuracy vs measured latency", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, how, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save_fig(fig, path)


def _fidelity_plot(path: Path, fid: list[dict[str, Any]], how: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.2))
    ax = fig.add_subplot(111)
    lo, hi = math.inf, 0.0
    for r in fid:
        xs = [p["measured_ms"] for p in r["points"]]
        ys = [p["predicted_ms"] for p in r["points"]]
        if xs:
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
            ax.scatter(xs, ys, s=14, label=f"{r['label']} (median |err| {r['median_abs_rel_error']:.1%})")
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="predicted = measured")
    ax.set_xlabel("measured latency (ms; ratio to dense in interleaved blocks × fitted dense ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title("Latency model fidelity (rlprune-edge latency-check)", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, how, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save_fig(fig, path)


def _save_fig(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def render(doc: dict[str, Any], out_dir: Path, command: str) -> list[Path]:
    """BENCHMARKS.md and the plots from a results document; returns the files written."""
    settings, cells = doc["settings"], doc["cells"]
    bench = out_dir / "benchmarks"
    written: list[Path] = []
    bases = {r["label"]: r for r in _ok(cells, "base")}
    any_base = next(iter(bases.values()), {})
    how = _measured_how(settings, any_base) if any_base else f"profile {settings['profile']}"
    machine = _machine_line(any_base) if any_base else "unknown (no base cell finished)"
    finished = sorted(r["finished"] for r in cells.values() if r.get("status") == "ok")
    loads = [x for r in cells.values() if r.get("status") == "ok" for x in r.get("loadavg_1m", [])]
    pkgs = _package_versions()
    md: list[str] = ["# Benchmarks", ""]
    md += [f"Generated by `{command}` — every number below comes from `benchmarks/results.json`, written by that "
           "tool's runs (do not edit by hand; rerun the tool).", ""]
    if settings.get("quick"):
        md += ["> **Quick smoke run** (`--quick`): a tiny model trained for one epoch on a subset, tiny budgets and "
               "few latency runs. It checks the plumbing; the numbers say nothing about the methods.", ""]
    md += ["## How it was measured", ""]
    md += [f"- Machine: {machine}; load average (1 min) seen at cell start/end: "
           + (f"{min(loads):.1f}–{max(loads):.1f}" if loads else "—") + " (the machine is shared; latency "
           "comparisons are interleaved with the dense model in one window to cancel slow drift common to both "
           "models; drift that affects a large and a small model differently is not cancelled, and cells measured "
           "in different windows are not strictly comparable: check with `tools/drift_check.py`, re-measure finals "
           "together with `tools/remeasure_finals.py`).",
           f"- Latency: {how}. *Latency / dense* and *speed-up* come from the same interleaved window; the absolute "
           "medians of different cells were measured in different windows.",
           f"- Software: {', '.join(f'{k} {v}' for k, v in pkgs.items())}; commit {_git_commit()}; torch CPU threads "
           f"for training/search/distillation: {settings['torch_threads']}.",
           f"- Data: {settings['data']} (test accuracy on "
           + (f"{settings['test_images']} test images" if settings["test_images"] else "the full 10,000-image test split")
           + "; the search scores candidates on a held-out validation subset of the training split, never on test).",
           f"- Base models: `rlprune-edge train` for {settings['train_epochs']} epoch(s)"
           + (f" on {settings['train_limit']} training images" if settings["train_limit"] else "")
           + (", or the shipped VGG-19 w0.25 checkpoint when present" if settings.get("use_shipped") else "") + ".",
           f"- Same budget for every method and seed: final distillation {settings['kd_epochs']} epoch(s) × "
           f"{settings['kd_images'] or 'all'} images (`rlprune_edge.distill`, T = 2, α = 0.75). RL-Pruner search "
           f"(`rlprune-edge compress`): at most {settings['steps']} steps, {settings['step_ratio']:g} of the channels "
           f"per step, K = {settings['candidates']} candidates × R = {settings['rounds']} rounds, "
           f"{settings['val_size']} validation images per candidate, latency model fitted on "
           f"{settings['latency_variants']} variants (cached per architecture: the first cell of a model pays the "
           "fit, not counted in *search s*). Uniform baseline: Torch-Pruning `MetaPruner` + `TaylorImportance` "
           f"(global_pruning=False, round_to = the profile's channel multiple unless set), pruning ratio bisected "
           f"({settings['uniform_iterations']} steps in [0, {settings['uniform_max_ratio']:g}]) on measured latency "
           f"(median of {settings.get('uniform_repeats', 1)} interleaved window(s) per probe); "
           "its *search s* is the bisection time.",
           "- *search s*: wall time of the search alone; *cell wall s*: the whole cell (search, distillation, export, "
           "final interleaved measurement). A target counts as met when the final measured latency ratio is within "
           f"{MET_TOLERANCE:.2f}× of it.",
           f"- Cells finished between {finished[0]} and {finished[-1]} (UTC)." if finished else "- No cell finished.",
           ""]

    md += _coverage(cells, settings)

    md += ["## Base models", ""]
    rows = []
    for label, b in bases.items():
        meta = b.get("train_meta", {})
        rows.append([label, b["source"], str(meta.get("epochs", b.get("train_epochs", "—"))),
                     f"{b['test_acc'] * 100:.2f}", f"{b['latency_ms']:.3f}", f"{b['p90_ms']:.3f}",
                     f"{b['flops'] / 1e6:.2f}", f"{b['params']:,}",
                     _fmt_s(b.get("train_s") if b.get("train_s") is not None else meta.get("wall_s")),
                     str(meta.get("torch_threads", "—"))])
    md += [_table(("model", "checkpoint", "epochs", "test acc %", "dense latency median ms", "p90 ms", "MFLOPs",
                   "params", "train time", "train threads"), rows) if rows else "_No base model finished._", ""]

    pareto = _with_common(cells, doc.get("common", {}))
    md += ["## Pareto comparison at measured-latency targets", ""]
    if pareto:
        md += ["*latency / dense* is each cell's own final measurement (interleaved with the dense model, in the "
               "cell's own window); it decides *target met*. *latency / dense, common windows*: all finals of one "
               f"(model, target, seed) measured again together with their dense model, in {COMMON_WINDOWS[0]} "
               f"windows {COMMON_WINDOWS[1]:g} s apart (median over windows): only these are compared at equal "
               "latency, and the reading below uses them.", ""]
    if not pareto:
        md += ["_No Pareto cell finished._", ""]
    for label in _labels({k: v for k, v in cells.items() if v.get("kind") == "pareto"}):
        rs = [r for r in pareto if r["label"] == label]
        refused = _unreachable(cells, label)
        if not rs and not refused:
            continue
        md += [f"### {label}", ""]
        for target in sorted({r["target"] for r in rs} | {r["target"] for r in refused}, reverse=True):
            md += [f"Target {target:g}× dense latency:", ""]
            here = [r for r in rs if r["target"] == target]
            if here:
                md += [_table(PARETO_HEADER, _pareto_rows(here)), ""]
            md += _unreachable_lines([r for r in refused if r["target"] == target])
        if not rs:
            continue
        png = bench / f"pareto_{label}.png"
        _pareto_plot(png, label, rs, bases.get(label), f"{machine}. {how}.")
        written.append(png)
        md += [f"![{label}: accuracy vs measured latency](benchmarks/{png.name})", ""]
    if pareto:
        floors = [f"- {lab} @ {t:g}×: below this model's floor on this profile; `compress` refuses it (see the "
                  "table), so no reward can be compared there."
                  for lab, t in sorted({(r["label"], r["target"]) for r in cells.values()
                                        if r.get("status") == "unreachable" and r.get("method") == "latency"})]
        md += ["### Reading (generated from the rows above)", ""] + _reading(pareto) + floors + [
            "", "FLOPs are shown next to each result: at equal measured latency, keeping more FLOPs means the search "
            "removed the channels that cost time on this runtime rather than the ones that cost arithmetic. "
            + ("Several seeds: ± is the sample standard deviation." if len(_seeds_of(pareto)) > 1 else
               "One seed per setting: no seed-to-seed spread was measured, so small gaps may be noise."), ""]

    paper = _ok(cells, "paper")
    md += ["## Paper-style table: sparsity with the accuracy reward", "",
           "RL-Pruner's layout (accuracy, FLOPs and parameter reduction at a given channel sparsity), "
           f"`rlprune-edge compress --sparsity S --reward accuracy --channel-multiple "
           f"{settings.get('paper_channel_multiple', 1)}` with the budget above. "
           + ("Channel counts are not rounded (multiple 1, as in the paper), so every sparsity is reachable on "
              "every model; the speed-up column is measured on the profile anyway, and unrounded widths run "
              "slower per FLOP on ONNX Runtime than the multiple-of-8 widths the Pareto cells use."
              if settings.get("paper_channel_multiple", 1) == 1 else
              "Kept channels are rounded to that multiple, which caps the reachable sparsity of narrow models."),
           ""]
    if not paper:
        md += ["_No paper-table cell finished._", ""]
    for label in _labels({k: v for k, v in cells.items() if v.get("kind") == "paper"}):
        rs = [r for r in paper if r["label"] == label]
        if not rs:
            continue
        rows = []
        for sp in sorted({r["sparsity"] for r in rs}):
            g = [r for r in rs if r["sparsity"] == sp]
            rows.append([f"{sp * 100:g}%", _fmt_stat([r["base_test_acc"] for r in g], ".2f", 100),
                         _fmt_stat([r["test_acc"] for r in g], ".2f", 100),
                         _fmt_stat([r["test_acc"] - r["base_test_acc"] for r in g], "+.2f", 100),
                         _fmt_stat([1 - r["flops"] / r["base_flops"] for r in g], ".1f", 100),
                         _fmt_stat([1 - r["params"] / r["base_params"] for r in g], ".1f", 100),
                         _fmt_stat([r["speedup"] for r in g], ".2f") + "×", str(len(g))])
        md += [f"### {label}", "", _table(PAPER_HEADER, rows), ""]

    fid = _ok(cells, "fidelity")
    md += ["## Latency-model fidelity", "",
           "`rlprune-edge latency-check`: the latency model is fitted on per-layer profiles of a few pruned variants, "
           "then random pruned variants are measured for real (interleaved with the dense model) and compared with "
           "the prediction. Error = predicted / measured − 1.", ""]
    if fid:
        md += [_table(FIDELITY_HEADER, [[r["label"], str(r["variants"]), f"{r['median_abs_rel_error'] * 100:.1f}",
                                         f"{r['p90_abs_rel_error'] * 100:.1f}",
                                         f"{(r.get('max_abs_rel_error') or 0) * 100:.1f}",
                                         f"{r.get('dense_ms') or 0:.3f}", str(settings["fidelity_fit_variants"])]
                                        for r in fid]), ""]
        png = bench / "latency_fidelity.png"
        _fidelity_plot(png, fid, f"{machine}. {how}.")
        written.append(png)
        md += [f"![latency model fidelity](benchmarks/{png.name})", ""]
    else:
        md += ["_No fidelity cell finished._", ""]

    failed = [(k, r) for k, r in cells.items() if r.get("status") not in FINISHED]
    if failed:
        md += ["## Cells that did not finish", "", "Rerun the same command to retry them.", ""]
        md += [f"- `{k}`: {r.get('error', 'unknown error')}" for k, r in failed] + [""]
    target = out_dir / "BENCHMARKS.md"
    _write_text(target, "\n".join(md))
    return [target, *written]


def _coverage(cells: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """A 'Coverage' section: which cells of the full default grid finished (a partial run says so)."""
    if settings.get("quick"):
        return []
    grid = plan_cells(parse_models(FULL_DEFAULTS["models"]), _floats(FULL_DEFAULTS["targets"], "targets", 0, 1),
                      _ints(FULL_DEFAULTS["seeds"], "seeds"), _floats(FULL_DEFAULTS["sparsities"], "sparsities", 0, 1),
                      METHODS)
    done = [c.id for c in grid if cells.get(c.id, {}).get("status") in FINISHED]
    if len(done) == len(grid):
        return ["## Coverage", "", f"All {len(grid)} cells of the full default grid finished.", ""]
    missing = [c.id for c in grid if c.id not in done]
    return ["## Coverage", "",
            f"> **Partial run: {len(done)} of the {len(grid)} cells of the full default grid have finished.** "
            "Tables below show only finished cells; rerun `.venv/bin/python tools/benchmark.py` to continue "
            "(it resumes from `benchmarks/results.json`).", "",
            "Not yet run: " + ", ".join(f"`{m}`" for m in missing) + ".", ""]


def _seeds_of(rows: list[dict[str, Any]]) -> set[int]:
    return {int(r["seed"]) for r in rows}


def _package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "onnxruntime", "torch-pruning", "onnx", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


# --- main ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/benchmark.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="minutes-long smoke run on tiny settings")
    p.add_argument("--models", default=None, help="NAME:WIDTH list (default vgg19:0.25,resnet56:0.5,mobilenetv3_large:0.5)")
    p.add_argument("--targets", default=None, help="latency targets as fractions of dense (default 0.7,0.5,0.3)")
    p.add_argument("--seeds", default=None, help="seeds (default 0)")
    p.add_argument("--sparsities", default=None, help="paper-table sparsities (default 0.2,0.4,0.6,0.8)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--profile", default=None, help="device profile (default host-cpu; --quick: a few-runs CPU profile)")
    p.add_argument("--data", default="fashion-mnist", help="data spec (default fashion-mnist)")
    p.add_argument("--out-dir", default=".", help="where BENCHMARKS.md and benchmarks/ go (default .)")
    p.add_argument("--train-epochs", type=int, default=None, help="epochs for base models (default 5; the shipped VGG-19 w0.25 recipe is 3)")
    p.add_argument("--kd-epochs", type=int, default=None, help="final distillation epochs, all methods (default 1)")
    p.add_argument("--kd-images", type=int, default=None, help="images per distillation epoch (default 12000)")
    p.add_argument("--steps", type=int, default=None, help="compress --steps (default 60)")
    p.add_argument("--step-ratio", type=float, default=None, help="compress --step-ratio (default 0.06)")
    p.add_argument("--candidates", type=int, default=None, help="compress --candidates (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="compress --rounds (default 2)")
    p.add_argument("--val-size", type=int, default=None, help="compress --val-size (default 1000)")
    p.add_argument("--latency-variants", type=int, default=None, help="compress --latency-variants (default 16)")
    p.add_argument("--test-images", type=int, default=None, help="test images (0 = the whole test split; default 0)")
    p.add_argument("--fidelity-variants", type=int, default=None, help="latency-check --variants (default 30)")
    p.add_argument("--uniform-iterations", type=int, default=None, help="bisection steps of the uniform baseline (default 6)")
    p.add_argument("--uniform-repeats", type=int, default=None,
                   help="interleaved windows per bisection probe, median taken (default 3)")
    p.add_argument("--uniform-round-to", type=int, default=0,
                   help="Torch-Pruning round_to for the uniform baseline (0 = the profile's channel multiple)")
    p.add_argument("--paper-channel-multiple", type=int, default=None,
                   help="compress --channel-multiple for the paper-table cells (default 1: no rounding, as the paper)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch CPU threads for training/search/KD (default 1)")
    p.add_argument("--no-shipped", action="store_true", help="train VGG-19 w0.25 too instead of using the shipped checkpoint")
    p.add_argument("--only", default=None, metavar="REGEX", help="run only cells whose id matches REGEX")
    p.add_argument("--list", action="store_true", help="print the cells (done / pending, estimates) and exit")
    p.add_argument("--render-only", action="store_true", help="only rewrite BENCHMARKS.md and plots from results.json")
    p.add_argument("--fresh", action="store_true", help="discard benchmarks/results.json and start over")
    p.add_argument("--keep-runs", action="store_true", help="keep every search step's checkpoint in benchmarks/runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the pipeline")
    return p


def _settings(args: argparse.Namespace, out_dir: Path) -> tuple[Settings, dict[str, Any]]:
    d = dict(QUICK_DEFAULTS if args.quick else FULL_DEFAULTS)
    for key in ("models", "targets", "seeds", "sparsities", "profile", "train_epochs", "kd_epochs", "kd_images",
                "steps", "step_ratio", "candidates", "rounds", "val_size", "latency_variants", "test_images",
                "fidelity_variants", "uniform_iterations", "uniform_repeats", "torch_threads",
                "paper_channel_multiple"):
        v = getattr(args, key)
        if v is not None:
            d[key] = v
    for key in ("train_epochs", "kd_epochs", "kd_images", "steps", "candidates", "rounds", "val_size",
                "latency_variants", "test_images", "fidelity_variants", "uniform_iterations", "uniform_repeats",
                "torch_threads", "uniform_round_to", "paper_channel_multiple"):
        v = d.get(key, getattr(args, key, 0))
        lo = 0 if key in ("kd_epochs", "kd_images", "test_images", "uniform_iterations", "uniform_round_to") else 1
        if v < lo:
            raise UserError(f"--{key.replace('_', '-')} {v} is too small; give at least {lo}.")
    if not 0.0 < d["step_ratio"] < 0.5:
        raise UserError(f"--step-ratio {d['step_ratio']} is outside (0, 0.5); e.g. 0.06.")
    if not d["profile"]:
        d["profile"] = str(out_dir / "benchmarks" / "quick-profile.toml")
    s = Settings(quick=bool(args.quick), profile=d["profile"], data=args.data, train_epochs=d["train_epochs"],
                 train_limit=d["train_limit"], kd_epochs=d["kd_epochs"], kd_images=d["kd_images"], steps=d["steps"],
                 step_ratio=d["step_ratio"], candidates=d["candidates"], rounds=d["rounds"], val_size=d["val_size"],
                 latency_variants=d["latency_variants"], test_images=d["test_images"],
                 pareto_test_size=d["pareto_test_size"], fidelity_variants=d["fidelity_variants"],
                 fidelity_fit_variants=d["fidelity_fit_variants"], uniform_iterations=d["uniform_iterations"],
                 uniform_max_ratio=d["uniform_max_ratio"], uniform_round_to=args.uniform_round_to,
                 uniform_repeats=d["uniform_repeats"], torch_threads=d["torch_threads"], use_shipped=not args.no_shipped,
                 paper_channel_multiple=d["paper_channel_multiple"])
    return s, d


def _command_text(argv: Sequence[str]) -> str:
    return " ".join(["tools/benchmark.py", *argv])


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _main(args, argv)
    except UserError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir} is not a directory; give a directory path.")
    settings, d = _settings(args, out_dir)
    models = parse_models(d["models"])
    targets = _floats(d["targets"], "targets", 0.0, 1.0)
    seeds = _ints(d["seeds"], "seeds")
    sparsities = _floats(d["sparsities"], "sparsities", 0.0, 1.0)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UserError(f"--methods {args.methods!r}: use a subset of {','.join(METHODS)}.")
    only = None
    if args.only:
        try:
            only = re.compile(args.only)
        except re.error as exc:
            raise UserError(f"--only {args.only!r} is not a valid regular expression ({exc}).") from None
    bench = out_dir / "benchmarks"
    results = Results(bench / "results.json", settings, fresh=args.fresh)
    if settings.quick and not args.profile:
        _write_text(bench / "quick-profile.toml", QUICK_PROFILE)
    from rlprune_edge.profiles import load_profile

    load_profile(settings.profile)  # fail early on a bad profile
    command = _command_text(argv)
    if args.render_only:
        for p in render(results.doc, out_dir, command):
            print(f"wrote {p}")
        return 0
    cells = [c for c in plan_cells(models, targets, seeds, sparsities, methods) if only is None or only.search(c.id)
             or c.kind == "base"]
    pending = [c for c in cells if not results.done(c.id)]
    if args.list:
        for c in cells:
            est = estimate_s(c, results.cells)
            state = "done" if results.done(c.id) else ("FAILED before" if c.id in results.cells else "pending")
            print(f"{c.id:60} {state:14} ~{_fmt_s(est)}")
        print(f"{len(pending)} of {len(cells)} cells pending; {eta_line(pending, results.cells)}")
        return 0
    ctx = Context(settings, bench, results, quiet=args.quiet, keep_runs=args.keep_runs)
    results.doc["runs"].append({"command": command, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                "commit": _git_commit(), "host": platform.node(), "cpu_count": os.cpu_count()})
    results.save()
    _say(f"benchmark: {len(cells)} cells, {len(cells) - len(pending)} already done, {len(pending)} to run; "
         f"results in {results.path}")
    t0 = time.perf_counter()
    failed = 0
    with _torch_threads(settings.torch_threads):
        for i, cell in enumerate(pending):
            _say(f"benchmark [{i + 1}/{len(pending)}] {cell.id} — elapsed {_fmt_s(time.perf_counter() - t0)}, "
                 f"{eta_line(pending[i:], results.cells)}")
            rec = run_cell(cell, ctx)
            results.put(cell.id, rec)
            if rec["status"] == "unreachable":
                _say(f"benchmark: {cell.id}: target not reachable for this model (recorded as a result): "
                     f"{rec['error']}")
            elif rec["status"] != "ok":
                failed += 1
                _say(f"benchmark: {cell.id} FAILED: {rec['error']}")
            else:
                _say(f"benchmark: {cell.id} done in {_fmt_s(rec['wall_s'])}")
    with _torch_threads(settings.torch_threads):
        windows, pause = QUICK_COMMON_WINDOWS if settings.quick else COMMON_WINDOWS
        remeasure_common(ctx, windows, pause)
    written = render(results.doc, out_dir, command)
    for p in written:
        print(f"wrote {p}")
    print(f"benchmark: {len(pending) - failed} cell(s) run, {failed} failed, {len(cells) - len(pending)} reused; "
          f"wall {_fmt_s(time.perf_counter() - t0)}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("benchmark: interrupted; finished cells are saved in benchmarks/results.json — rerun the same command "
              "to continue.", file=sys.stderr)
        sys.exit(130)
