"""Issue 15's benchmark: the plan search vs two uniform baselines at equal measured latency.

For every model: the floor f (every group at its lower bound: max(channel multiple, 10% of its
width)) is measured against the dense model in common interleaved windows; the targets are
aggressive = f + 0.15·(1 − f) and moderate = f + 0.4·(1 − f), rounded to 0.05. For every (model,
target, seed) three methods run at the product's default fine-tune budget (what `compress` does by
default: the same final KD for all):

* ``plan``       — `rlprune-edge compress` (the default whole-plan search),
* ``uniform``    — `rlprune-edge compress --search uniform` (the project's uniform plan: same
                   importance, BN handling, measurement, KD),
* ``tp-uniform`` — Torch-Pruning's own uniform Taylor pruning (MetaPruner, global_pruning=False),
                   ratio bisected on measured latency, then the same KD.

Then all finals of the (model, target, seed) are re-measured together with the dense model in
common windows, one statistic for all (median over windows of the per-window block ratio). Results
go to ``benchmarks/search_results.json`` (resumable: finished cells are skipped) and a generated
section of ``BENCHMARKS.md``.

    .venv/bin/python -m tools.bench_search [--models vgg19:0.25,mobilenetv3_large:0.5,resnet20:1.0]
        [--seeds 0,1,2] [--levels aggressive,moderate] [--methods plan,uniform,tp-uniform] [--only REGEX]
        [--level NAME=RATIO ...] [--render-only] [--quick]

``--level between=0.45 --levels between`` runs a fixed target besides the floor's two (e.g. between
the uniform plan's size classes, where a plan search has room to differ from uniform).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlprune_edge.errors import UserError
from tools.benchmark import run_cli
from tools.benchmark.cells import run_compress as compress_call

ROOT = Path(__file__).resolve().parent.parent

LEVELS = {"aggressive": 0.15, "moderate": 0.4}
METHODS = ("plan", "uniform", "tp-uniform")
LABELS = {"plan": "plan search (ours, default)", "uniform": "uniform plan (project: same importance/BN/KD)",
          "tp-uniform": "uniform Taylor, Torch-Pruning"}
START, END = "<!-- bench_search:start -->", "<!-- bench_search:end -->"
COMMON_WINDOWS = 5
COMMON_SESSIONS = 5
DEFAULT_PROFILE = "host-cpu"
QUICK_SESSIONS = (2, 0.5)  # --quick (a smoke run of the workflow): sessions and pause of the common measurements


def _say(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _save(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def base_checkpoint(work: Path, name: str, width: float, epochs: int, quick: bool) -> Path:
    """The shipped VGG-19 w0.25, else benchmarks/models/NAME_wW_eE_fashion-mnist.pt (trained once, kept in git)."""
    from rlprune_edge.checkpoint import DEFAULT_MODEL, DEFAULT_WIDTH, default_checkpoint_path

    if name == DEFAULT_MODEL and abs(width - DEFAULT_WIDTH) < 1e-9 and not quick:
        return default_checkpoint_path()
    path = work / "benchmarks" / "models" / f"{name}_w{width:g}_e{epochs}{'_quick' if quick else ''}_fashion-mnist.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["train", "--model", name, "--width", f"{width:g}", "--data", "fashion-mnist", "--epochs", str(epochs),
                "--out", str(path), "--seed", "0", "--quiet"]
        if quick:
            argv += ["--limit", "512"]
        _say(f"training {path.name}")
        run_cli(argv)
    return path


def measure_floor(ckpt: Path, profile_name: str, sessions: int = COMMON_SESSIONS, pause_s: float = 5.0) -> dict[str, Any]:
    """The floor model (every group at its lower bound) vs dense in common windows."""
    import torch

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.flops import count_params
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.latency.campaign import robust_ratios
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.pruning import prune
    from rlprune_edge.search.plan import PlanSpace, follower_groups

    profile = load_profile(profile_name)
    dense, info = load_checkpoint(ckpt)
    dense.eval()
    x = torch.zeros(1, *info.input_shape)
    groups = prunable_groups(dense, x)
    space = PlanSpace.build([g.name for g in groups], [g.channels for g in groups], [g.prunable for g in groups],
                            int(profile.pruning.channel_multiple), 0.1, follower_groups(dense, x, groups))
    floor = prune(dense, x, keep=space.as_dict(space.floor_keep()), importance="l1", groups=groups)
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        d = export_onnx(copy.deepcopy(dense), Path(tmp) / "dense.onnx", tuple(info.input_shape), batch=1)
        f = export_onnx(floor, Path(tmp) / "floor.onnx", tuple(info.input_shape), batch=1)
        ratios, dense_ms, per_session = robust_ratios(get_backend(profile), profile, d, [f], sessions=sessions,
                                                      pause_s=pause_s, gate=SteadyGate.for_artifact(profile, d))
    return {"floor_ratio": ratios[0], "dense_ms": dense_ms, "channel_multiple": int(profile.pruning.channel_multiple),
            "sessions": [s[0] for s in per_session],
            "floor_params": int(count_params(floor)), "dense_params": int(count_params(dense))}


def targets_from_floor(f: float) -> dict[str, float]:
    return {lvl: round(round((f + k * (1.0 - f)) / 0.05) * 0.05, 2) for lvl, k in LEVELS.items()}


def run_compress(ckpt: Path, target: float, seed: int, method: str, out: Path, extra: list[str],
                 profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    argv = ["compress", "--model", str(ckpt), "--target-latency", f"{target:g}x", "--seed", str(seed),
            "--out", str(out), "--no-bundle", "--quiet", "--profile", profile, *extra]
    if method == "uniform":
        argv += ["--search", "uniform"]
    resume = (out / "search" / "plan_state.json").is_file() and not (out / "report.json").is_file()
    rep = compress_call([*argv, "--resume"] if resume else argv)
    s = rep.get("search", {})
    return {"test_acc": rep["final"]["test_acc"], "base_test_acc": rep["base"]["test_acc"],
            "own_ratio": rep["measured_ratio"], "params": rep["final"]["params"], "flops": rep["final"]["flops"],
            "search_s": s.get("search_s"), "kd_s": rep["distill"]["kd_s"], "wall_s": rep["wall_s"],
            "fallback_to_uniform": s.get("fallback_to_uniform"), "reached": rep.get("reached"),
            "onnx": str(out / "model.onnx"), "command": ["rlprune-edge", *argv]}


def run_tp_uniform(ckpt: Path, target: float, seed: int, out: Path, kd_epochs: int | None,
                   kd_images: int | None = None, iterations: int = 6, profile_name: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """Torch-Pruning's uniform Taylor pruning bisected on measured latency, then compress's default KD."""
    import torch

    from rlprune_edge.baselines import bisect_uniform
    from rlprune_edge.checkpoint import load_checkpoint, save_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.distill import DistillConfig, distill
    from rlprune_edge.flops import count_flops, count_params
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.search.env import accuracy, tensors

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    profile = load_profile(profile_name)
    backend = get_backend(profile)
    data = load_data("fashion-mnist", seed=seed)
    dense, info = load_checkpoint(ckpt)
    dense.eval()
    shape = tuple(info.input_shape)
    cx, cy = tensors(data.subset("train", 1024, seed=seed + 1))  # as many images as our importance uses
    calib = [(cx[i:i + 64], cy[i:i + 64]) for i in range(0, len(cx), 64)]
    with tempfile.TemporaryDirectory(prefix="bench-tp-", dir=out) as tmp:
        d = export_onnx(copy.deepcopy(dense), Path(tmp) / "dense.onnx", shape, batch=1)
        res = bisect_uniform(dense, torch.zeros(1, *shape), target, calib, backend, profile, d, Path(tmp),
                             round_to=int(profile.pruning.channel_multiple), repeats=3, iterations=iterations,
                             gate=SteadyGate.for_artifact(profile, d))  # compress's statistic and speed gate
    search_s = time.perf_counter() - t0
    student = res.model
    torch.manual_seed(seed + 12345)
    t_kd = time.perf_counter()
    epochs = kd_epochs if kd_epochs is not None else 4  # compress's default --kd-epochs
    distill(student, dense, data, DistillConfig(epochs=epochs, seed=seed, limit=kd_images), progress=False)
    kd_s = time.perf_counter() - t_kd
    student.eval()
    tx, ty = tensors(data.test)
    save_checkpoint(out / "model.pt", student, info)
    export_onnx(copy.deepcopy(student), out / "model.onnx", shape, batch=1)
    return {"test_acc": accuracy(student, tx, ty), "base_test_acc": accuracy(dense, tx, ty),
            "own_ratio": res.measured_ratio, "params": int(count_params(student)),
            "flops": int(count_flops(student, shape)), "search_s": search_s, "kd_s": kd_s,
            "wall_s": time.perf_counter() - t0, "pruning_ratio": res.pruning_ratio, "reached": res.reached,
            "onnx": str(out / "model.onnx")}


def remeasure(ckpt: Path, cells: dict[str, dict], sessions: int = COMMON_SESSIONS, pause_s: float = 5.0,
              profile_name: str = DEFAULT_PROFILE) -> dict[str, float]:
    """Every final of one (model, target, seed) with the dense model in the same common windows."""
    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.latency.campaign import robust_ratios
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile

    profile = load_profile(profile_name)
    dense, info = load_checkpoint(ckpt)
    names = sorted(cells)
    with tempfile.TemporaryDirectory(prefix="bench-common-") as tmp:
        d = export_onnx(dense.eval(), Path(tmp) / "dense.onnx", tuple(info.input_shape), batch=1)
        ratios, _, _ = robust_ratios(get_backend(profile), profile, d, [Path(cells[n]["onnx"]) for n in names],
                                     sessions=sessions, pause_s=pause_s, gate=SteadyGate.for_artifact(profile, d))
    return dict(zip(names, ratios, strict=True))


# --- rendering ------------------------------------------------------------------------------------------
def _mean_sd(v: list[float], scale: float = 100.0, fmt: str = "{:.2f}") -> str:
    if not v:
        return "—"
    m = statistics.mean(v) * scale
    return fmt.format(m) + (f" ± {fmt.format(statistics.stdev(v) * scale)}" if len(v) > 1 else "")


def render(doc: dict) -> str:
    multiples = sorted({int(m["floor"]["channel_multiple"]) for m in doc.get("models", {}).values()
                        if "channel_multiple" in m.get("floor", {})})
    multiple = "/".join(map(str, multiples)) or "the profile's"
    lines = [START, "## Issue 15: plan search vs uniform pruning at equal measured latency", "",
             "Generated by `python -m tools.bench_search` from `benchmarks/search_results.json`. Targets come from each "
             "model's measured floor f (every group at max(the profile's channel multiple, 10% of its width); host-cpu's "
             f"multiple was {multiple} in these runs): aggressive = f + "
             "0.15·(1 − f), moderate = f + 0.4·(1 − f), rounded to 0.05 (any other named target is fixed by `--level`). Every method gets `compress`'s default "
             "fine-tune budget (4 KD epochs over the train split). Latency: all finals of a (model, target, seed) "
             f"re-measured with the dense model in {COMMON_SESSIONS} sessions 5 s apart, each of ≥ 5 common interleaved "
             "windows (median over sessions of the median over windows of the per-window ratio of block "
             "medians, `latency.campaign.robust_ratios`); host-cpu (ONNX Runtime, 2 threads) on this 2-core VM.", ""]
    for label, m in doc.get("models", {}).items():
        fl = m.get("floor")
        if not fl:
            continue
        lines += [f"### {label}", "", f"floor f = {fl['floor_ratio']:.3f}× dense ({fl['floor_params']:,} params; dense "
                  f"{fl['dense_params']:,}); targets: " + ", ".join(f"{k} {v:g}×" for k, v in m["targets"].items()), ""]
        for lvl, tgt in m["targets"].items():
            groups = {k: v for k, v in m.get("cells", {}).items() if k.startswith(f"{lvl}/")}
            if not groups:
                continue
            lines += [f"**{lvl} ({tgt:g}×)**", "",
                      "| method | seeds | test acc % | drop from dense (points) | latency / dense (common) | params | search s |",
                      "|---|---|---|---|---|---|---|"]
            for meth in METHODS:
                rows = [c[meth] for c in groups.values() if meth in c and "common_ratio" in c[meth]]
                if not rows:
                    continue
                lines.append(f"| {LABELS[meth]} | {len(rows)} | {_mean_sd([r['test_acc'] for r in rows])} | "
                             f"{_mean_sd([r['test_acc'] - r['base_test_acc'] for r in rows])} | "
                             f"{_mean_sd([r['common_ratio'] for r in rows], 1.0, '{:.3f}')} | "
                             f"{statistics.mean(r['params'] for r in rows):,.0f} | "
                             f"{statistics.mean(r['search_s'] for r in rows):.0f} |")
            gains = []
            for seed_key, c in sorted(groups.items()):
                if all(k in c and "common_ratio" in c[k] for k in METHODS):
                    better = max(c["uniform"]["test_acc"], c["tp-uniform"]["test_acc"])
                    notes = ["uniform kept"] if c["plan"].get("fallback_to_uniform") else []
                    over = [LABELS[k].split(" (")[0] + f" {c[k]['common_ratio']:.3f}×" for k in METHODS
                            if c[k]["common_ratio"] > tgt]
                    if over:
                        notes.append("over the target in the common windows: " + ", ".join(over))
                    note = f" ({'; '.join(notes)})" if notes else ""
                    gains.append((seed_key.split("/")[-1], 100 * (c["plan"]["test_acc"] - better),
                                  c["plan"]["params"] / fl["floor_params"], note))
            if gains:
                mean_gain = statistics.mean(g for _, g, _, _ in gains)
                lines += ["", "Paired, plan search minus the better uniform baseline: " + ", ".join(
                    f"{s} {g:+.2f}{note}" for s, g, _, note in gains)
                    + f"; mean {mean_gain:+.2f} points; plan params / floor params "
                    + ", ".join(f"{r:.1f}×" for _, _, r, _ in gains) + "."]
            lines.append("")
        for old in m.get("superseded", []):
            res = old["results"]
            lines.append(f"Superseded (earlier code, re-run above): {old['cell']}: " + ", ".join(
                f"{LABELS.get(k, k)} {100 * r['test_acc']:.2f}%" for k, r in res.items() if isinstance(r, dict)
                and "test_acc" in r) + ".")
        if m.get("superseded"):
            lines.append("")
    lines += [f"Cells finished: {len(doc.get('log', []))}; last: {doc['log'][-1] if doc.get('log') else '—'}.", END]
    return "\n".join(lines)


def write_section(text: str, work: Path) -> None:
    path = work / "BENCHMARKS.md"
    old = path.read_text() if path.exists() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + text + old[old.index(END) + len(END):]
    else:
        head, sep, rest = old.partition("\n\n")
        new = head + sep + text + "\n\n" + rest
    tmp = path.with_name(".BENCHMARKS.md.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def model_item(item: str) -> tuple[str, float]:
    """``NAME[:WIDTH]`` → (name, width); a torchvision name keeps its prefix (``torchvision:resnet18:1``)."""
    head, sep, tail = item.rpartition(":")
    try:
        return (head, float(tail)) if sep else (item, 1.0)
    except ValueError:
        return item, 1.0


def fixed_levels(specs: list[str]) -> dict[str, float]:
    """``--level NAME=RATIO`` arguments as {name: ratio}; a bad one is refused (UserError)."""
    out: dict[str, float] = {}
    for spec in specs:
        name, _, ratio = spec.partition("=")
        try:
            value = float(ratio)
        except ValueError:
            value = 0.0
        if not name or name in LEVELS or not 0.0 < value < 1.0:
            raise UserError(f"--level {spec!r} is not NAME=RATIO with a new name and a ratio in (0, 1); "
                            "e.g. --level between=0.45.")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vgg19:0.25,mobilenetv3_large:0.5,resnet20:1.0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--levels", default="aggressive,moderate")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--only", default=None, help="regex on cell ids (MODEL/LEVEL/seedN/METHOD)")
    p.add_argument("--redo", default=None,
                   help="regex on cell ids: matching results (of earlier code) move to the model's 'superseded' "
                        "list with their date and are run again; the cell's other finals stay and are re-measured "
                        "with them in common windows")
    p.add_argument("--level", action="append", default=[], metavar="NAME=RATIO",
                   help="a fixed target (ratio to dense) named NAME, usable in --levels (repeatable)")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke run of the workflow: tiny training, short searches, "
                   "1 KD epoch of 512 images, a 4-variant latency model, 3 bisection steps for Torch-Pruning, "
                   "common measurements in 2 sessions 0.5 s apart (its figures mean nothing)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training, search and KD (default 2: "
                   "the recorded runs; latency is measured with the profile's own threads)")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"device profile every method is measured on (default {DEFAULT_PROFILE}; the recorded tables are host-cpu)")
    p.add_argument("--work", default=str(ROOT), help="where benchmarks/ and BENCHMARKS.md are (default: the repository)")
    args = p.parse_args(argv)
    fixed = fixed_levels(args.level)
    unknown = [lvl for lvl in args.levels.split(",") if lvl not in LEVELS and lvl not in fixed]
    if unknown:
        raise UserError(f"--levels names {unknown[0]!r}, which is neither aggressive, moderate nor a --level; "
                        "add --level NAME=RATIO for a fixed target.")
    work = Path(args.work)
    import torch

    torch.set_num_threads(args.threads)
    path = work / "benchmarks" / "search_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(path.read_text()) if path.exists() else {"version": 1, "models": {}, "log": []}
    if args.render_only:
        write_section(render(doc), work)
        return 0
    extra = ["--candidates", "4", "--per-round", "2", "--probe-batches", "4", "--screen-batches", "2",
             "--kd-epochs", "1", "--kd-images", "512", "--select-size", "200", "--confirm-size", "200", "--latency-variants", "4"] if args.quick else []
    protocol = QUICK_SESSIONS if args.quick else (COMMON_SESSIONS, 5.0)
    for item in args.models.split(","):
        name, width = model_item(item)
        label = f"{name}-w{width:g}"
        ckpt = base_checkpoint(work, name, width, args.train_epochs if not args.quick else 1, args.quick)
        m = doc["models"].setdefault(label, {"checkpoint": str(ckpt), "cells": {}})
        if "floor" not in m:
            _say(f"{label}: measuring the floor")
            m["floor"] = measure_floor(ckpt, args.profile, *protocol)
            m["targets"] = targets_from_floor(m["floor"]["floor_ratio"])
            _save(path, doc)
        m["targets"].update(fixed)
        for lvl in args.levels.split(","):
            tgt = m["targets"][lvl]
            for seed in (int(s) for s in args.seeds.split(",")):
                key = f"{lvl}/seed{seed}"
                cell = m["cells"].setdefault(key, {})
                if args.redo:
                    old = {k: v for k, v in cell.items() if re.search(args.redo, f"{label}/{key}/{k}")}
                    gone = [k for k, v in cell.items() if k not in old and not Path(v.get("onnx", "")).is_file()]
                    if old and gone:  # they could not be re-measured beside the new run
                        raise UserError(f"{label}/{key} keeps {', '.join(gone)} whose model files are gone "
                                        f"({cell[gone[0]].get('onnx')}); add them to --redo to run the whole cell again.")
                    if old:
                        # the matched methods move and run again; every final of the cell (kept ones
                        # too) is then re-measured together in common windows
                        m.setdefault("superseded", []).append({"cell": key, "results": dict(old)})
                        for k in old:
                            del cell[k]
                        for k in cell:
                            cell[k].pop("common_ratio", None)
                        _save(path, doc)
                for meth in args.methods.split(","):
                    cid = f"{label}/{key}/{meth}"
                    if meth in cell or (args.only and not re.search(args.only, cid)):
                        continue
                    _say(f"{cid}: target {tgt:g}x")
                    out = work / "benchmarks" / "runs" / "search" / cid.replace("/", "_")
                    if meth == "tp-uniform":
                        cell[meth] = run_tp_uniform(ckpt, tgt, seed, out, 1 if args.quick else None,
                                                    512 if args.quick else None, 3 if args.quick else 6, args.profile)
                    else:
                        cell[meth] = run_compress(ckpt, tgt, seed, meth, out, extra, args.profile)
                    cell[meth]["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                    doc["log"].append(f"{cid} {cell[meth]['finished']} load {os.getloadavg()[0]:.2f}")
                    _save(path, doc)
                done = [k for k in METHODS if k in cell]
                if done and any("common_ratio" not in cell[k] for k in done):
                    _say(f"{label}/{key}: re-measuring {', '.join(done)} together")
                    for k, r in remeasure(ckpt, {k: cell[k] for k in done}, *protocol, args.profile).items():
                        cell[k]["common_ratio"] = r
                    _save(path, doc)
    write_section(render(doc), work)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as e:  # bad input (or a cell that cannot be completed): one sentence, exit 2
        print(f"bench_search: {e}", file=sys.stderr)
        raise SystemExit(2) from None
