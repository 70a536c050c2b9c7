"""The command line: flags, settings, the run loop."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rlprune_edge.errors import UserError
from tools.benchmark.cells import Context, _fmt_s, estimate_s, eta_line, remeasure_common, run_cell
from tools.benchmark.plan import (
    COMMON_WINDOWS,
    FULL_DEFAULTS,
    METHODS,
    QUICK_COMMON_WINDOWS,
    QUICK_DEFAULTS,
    QUICK_PROFILE,
    Settings,
    _floats,
    _ints,
    _say,
    parse_models,
    plan_cells,
)
from tools.benchmark.render import _git_commit, render
from tools.benchmark.store import Results, _write_text


# --- main ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.benchmark", description=__doc__.splitlines()[0])
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
    return " ".join(["python -m tools.benchmark", *argv])


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
    results.doc["runs"].append({"command": command, "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
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
