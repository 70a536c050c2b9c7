"""BENCHMARKS.md and the PNG plots, rendered from results.json alone."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.benchmark.cells import _fmt_s, _with_common
from tools.benchmark.plan import (
    COMMON_WINDOWS,
    FINISHED,
    FULL_DEFAULTS,
    MET_TOLERANCE,
    METHOD_LABELS,
    METHODS,
    _floats,
    _ints,
    parse_models,
    plan_cells,
)
from tools.benchmark.plots import _fidelity_plot, _mean, _pareto_plot
from tools.benchmark.store import _write_text


# --- rendering ----------------------------------------------------------------------------------------------
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
           "in different windows are not strictly comparable: check with `python -m benchmarks.studies.drift_check`, "
           "re-measure finals together with `python -m tools.remeasure_finals`).",
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
            "Tables below show only finished cells; rerun `.venv/bin/python -m tools.benchmark` to continue "
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
