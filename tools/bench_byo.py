"""Bring-your-own benchmark (issue 48): architectures the zoo does not have, each trained briefly with
`rlprune-edge train`, then `rlprune-edge compress` with the product's defaults at a 0.5x target on
host-cpu. One row per architecture: source, prunable groups, dense and final accuracy, measured ratio.

    .venv/bin/python -m tools.bench_byo --work runs/byo [--only timm:lcnet_050] [--epochs 3]
    .venv/bin/python -m tools.bench_byo --work runs/byo --table [--write]   # the table (into BENCHMARKS.md)

Every command run is printed (and kept in results.json) so any row can be re-run by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / ".venv" / "bin" / "rlprune-edge")
EDGENET = ROOT / "tests" / "data" / "edgenet.py"
START, END = "<!-- byo:start -->", "<!-- byo:end -->"

# (spec, source shown in the table, extra train args); every row: Fashion-MNIST 32x32, 10 classes
ROWS: tuple[tuple[str, str, list[str]], ...] = (
    ("timm:mobilenetv3_small_100", "timm", []),
    ("timm:efficientnet_lite0", "timm", []),
    ("timm:regnetx_002", "timm", []),
    ("timm:lcnet_075", "timm", []),
    ("timm:ghostnet_050", "timm", []),
    ("timm:mnasnet_small", "timm", []),
    (f"{EDGENET}:EdgeNet", "own class (file)", ["--model-args", "width=16"]),
    ("timm:mobilenetv3_small_075", "ONNX file", []),  # trained here, exported to ONNX, brought back as a file
)


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
    return rc, time.perf_counter() - t


def slug(spec: str) -> str:
    return spec.rsplit("/", 1)[-1].replace(":", "_").replace(".py", "")


def _floor(log: Path) -> float | None:
    """The smallest allowed model's measured ratio from a compress refused as unreachable, else None."""
    import re

    found = re.search(r"not reachable.*\(([0-9.]+)x\)", log.read_text()) if log.is_file() else None
    return float(found.group(1)) if found else None


def train_epochs(log: Path) -> int | None:
    """The epochs a dense model was trained for, from the first line of its `train` log."""
    import re

    first = log.read_text().splitlines()[0] if log.is_file() else ""
    found = re.search(r"(\d+) epochs?$", first.strip())
    return int(found.group(1)) if found else None


def groups_of(ckpt: Path, arch: list[str]) -> tuple[int, int]:
    """(prunable groups, all groups) of a checkpoint, from `inspect`'s table."""
    import torch

    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.graph import prunable_groups

    model, info = load_checkpoint(ckpt, arch=arch[1] if arch else None)
    groups = prunable_groups(model, torch.zeros(1, *info.input_shape))
    return sum(g.prunable for g in groups), len(groups)


def bench(spec: str, source: str, train_args: list[str], work: Path, epochs: int, target: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    dense = work / f"{slug(spec)}.pt"
    row: dict = {"spec": spec, "source": source, "commands": []}
    arch = ["--arch", spec] if source.startswith("own") else []
    if not dense.is_file():
        cmd = [CLI, "train", "--model", spec, *train_args, "--epochs", str(epochs), "--out", str(dense), "--quiet"]
        rc, wall = run(cmd, work / f"{slug(spec)}.train.log")
        row["commands"].append(cmd)
        row["train_s"] = wall
        if rc:
            return {**row, "error": f"train exit {rc}"}
    if source == "ONNX file":  # the trained model leaves as an ONNX file and comes back in through `import`
        onnx_file, dense = work / f"{slug(spec)}.onnx", work / f"{slug(spec)}_from_onnx.pt"
        if not dense.is_file():
            for cmd in ([CLI, "export", str(work / f"{slug(spec)}.pt"), "--profile", "host-cpu", "--out",
                         str(work / f"{slug(spec)}_bundle"), "--no-measure"],
                        [CLI, "import", str(work / f"{slug(spec)}_bundle" / "model.onnx"), "--out", str(dense)]):
                rc, _ = run(cmd, work / f"{slug(spec)}.{cmd[1]}.log")
                row["commands"].append(cmd)
                if rc:
                    return {**row, "error": f"{cmd[1]} exit {rc}"}
        onnx_file = work / f"{slug(spec)}_bundle" / "model.onnx"
        arch = ["--arch", str(onnx_file)]
    row["train_epochs"] = train_epochs(work / f"{slug(spec)}.train.log")
    row["prunable_groups"], row["groups"] = groups_of(dense, arch)
    out = work / slug(spec)
    cmd = [CLI, "compress", "--model", str(dense), *arch, "--target-latency", target, "--out", str(out), "--quiet"]
    rc, wall = run(cmd, work / f"{slug(spec)}.compress.log")
    row["commands"].append(cmd)
    floor = _floor(work / f"{slug(spec)}.compress.log") if rc else None
    if floor is not None:  # refused as unreachable: what a user does next, a target just above the floor
        row["floor_ratio"], target = floor, f"{math.ceil((floor + 0.05) * 20) / 20:g}x"
        cmd = [*cmd[:cmd.index("--target-latency") + 1], target, *cmd[cmd.index("--target-latency") + 2:]]
        rc, wall = run(cmd, work / f"{slug(spec)}.compress.log")
        row["commands"].append(cmd)
    row["target"] = target
    if rc:
        return {**row, "error": f"compress exit {rc}", "compress_s": wall}
    rep = json.loads((out / "report.json").read_text())
    b, f = rep["base"], rep["final"]
    row.update({"compress_s": wall, "dense_acc": b["test_acc"], "final_acc": f["test_acc"],
                "drop_pt": 100 * (b["test_acc"] - f["test_acc"]), "ratio": rep["measured_ratio"],
                "reached": rep["reached"], "dense_ms": b["latency_ms"], "params": [b["params"], f["params"]],
                "search": rep["search"].get("method"), "fallback_to_uniform": rep["search"].get("fallback_to_uniform")})
    print(f"  {spec}: {row['prunable_groups']}/{row['groups']} groups, {100 * b['test_acc']:.2f}% -> "
          f"{100 * f['test_acc']:.2f}%, {rep['measured_ratio']:.3f}x, {wall / 60:.1f} min", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| architecture | source | prunable groups | dense acc (epochs) | final acc (change) | measured ratio (target) | compress |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["spec"].rsplit("/", 1)[-1] + (" (as ONNX)" if r["source"] == "ONNX file" else "")
        if "error" in r:
            groups = f"{r['prunable_groups']} of {r['groups']}" if "groups" in r else "–"
            why = (f"0.5× refused as unreachable: the smallest allowed model measures {r['floor_ratio']:.2f}×"
                   if r.get("floor_ratio") else r["error"])
            lines.append(f"| {name} | {r['source']} | {groups} | – | – | {why} | {r.get('compress_s', 0) / 60:.1f} min |")
            continue
        floor = f"; 0.5× unreachable: floor {r['floor_ratio']:.2f}×" if r.get("floor_ratio") else ""
        lines.append(f"| {name} | {r['source']} | {r['prunable_groups']} of {r['groups']} | "
                     f"{100 * r['dense_acc']:.2f}% ({r.get('train_epochs') or '?'}) | "
                     f"{100 * r['final_acc']:.2f}% ({-r['drop_pt']:+.2f}) | "
                     f"{r['ratio']:.3f}× ({r.get('target', '0.5x').rstrip('x')}×{'' if r.get('reached') else ', over'}{floor}) | "
                     f"{r['compress_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "byo")
    ap.add_argument("--only", action="append", help="run only these specs (repeatable)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--target", default="0.5x")
    ap.add_argument("--table", action="store_true", help="print the table of results.json and stop")
    ap.add_argument("--redo", action="store_true", help="run rows that already finished again")
    ap.add_argument("--write", action="store_true", help="also put the table into BENCHMARKS.md (between its byo markers)")
    a = ap.parse_args()
    results = a.work / "results.json"
    done = json.loads(results.read_text()) if results.is_file() else []
    if not a.table:
        for spec, source, train_args in ROWS:
            if a.only and spec not in a.only and slug(spec) not in a.only:
                continue
            if not a.redo and any(r["spec"] == spec and "error" not in r for r in done):
                continue  # finished in an earlier invocation (--redo runs it again)
            row = bench(spec, source, train_args, a.work, a.epochs, a.target)
            done = [r for r in done if r["spec"] != spec] + [row]
            results.write_text(json.dumps(done, indent=1, default=str) + "\n")
    for r in done:  # rows finished before these columns existed
        r.setdefault("train_epochs", train_epochs(a.work / f"{slug(r['spec'])}.train.log"))
        if "error" in r and "floor_ratio" not in r:
            r["floor_ratio"] = _floor(a.work / f"{slug(r['spec'])}.compress.log")
    text = table(done)
    print(text)
    sys.stdout.flush()
    if a.write:
        doc = ROOT / "BENCHMARKS.md"
        md = doc.read_text()
        start, end = md.index(START) + len(START), md.index(END)
        doc.write_text(md[:start] + "\n" + text + "\n" + md[end:])


if __name__ == "__main__":
    main()
