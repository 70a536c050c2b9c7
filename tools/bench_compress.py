"""Benchmarks for `rlprune-edge compress` (issue 5 "must show"); prints and writes a JSON summary.

Scenarios (each one `rlprune-edge compress` subprocess, wall time measured around it):

* ``default``  – the embedded default (no arguments besides --out): final measured latency must be
  ≤ 0.5 × dense × 1.05 and the test-accuracy drop ≤ 1.0 point, in under 600 s.
* ``sparsity`` – VGG-19 w0.25 Fashion-MNIST, --sparsity 0.6 --reward accuracy: drop ≤ 1 point.
* ``rewards``  – same seed and budget, host-cpu, target 0.5x, --reward latency | accuracy | flops:
  test accuracy and measured latency of each final model.

Usage: .venv/bin/python -m tools.bench_compress [default sparsity rewards] [--out runs/bench-compress]
       [--extra "--kd-images 12000"]  (extra args are appended to every compress call)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(ROOT / ".venv" / "bin" / "rlprune-edge")]


def compress(out: Path, args: list[str], log: Path) -> dict:
    """Run one compress into `out`; return its report plus the wall time seen from outside."""
    cmd = [*CLI, "compress", "--out", str(out), "--quiet", *args]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
    wall = time.perf_counter() - t
    if rc != 0:
        print(f"  exit {rc}; see {log}", flush=True)
        return {"rc": rc, "outside_wall_s": wall}
    rep = json.loads((out / "report.json").read_text())
    rep["outside_wall_s"] = wall
    rep["rc"] = rc
    b, f = rep["base"], rep["final"]
    print(f"  dense {100 * b['test_acc']:.2f}% {b['latency_ms']:.3f} ms -> final {100 * f['test_acc']:.2f}% "
          f"{f['latency_ms']:.3f} ms, ratio {rep['measured_ratio']:.3f}, drop "
          f"{100 * (b['test_acc'] - f['test_acc']):.2f} pt, steps {len(rep['steps'])}, wall {wall:.0f}s", flush=True)
    return rep


def brief(rep: dict) -> dict:
    if rep.get("rc"):
        return rep
    b, f = rep["base"], rep["final"]
    return {"base_acc": b["test_acc"], "final_acc": f["test_acc"], "drop_pt": 100 * (b["test_acc"] - f["test_acc"]),
            "base_ms": b["latency_ms"], "final_ms": f["latency_ms"], "ratio": rep["measured_ratio"],
            "steps": len(rep["steps"]), "search_s": rep["search"]["search_s"], "kd_s": rep["distill"]["kd_s"],
            "wall_s": rep["outside_wall_s"],
            "step_points": [(s["step"], s["measured_ratio"], s["test_acc"]) for s in rep["steps"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench_compress", description=__doc__.splitlines()[0])
    p.add_argument("scenarios", nargs="*", default=["default", "sparsity", "rewards"])
    p.add_argument("--out", default="runs/bench-compress")
    p.add_argument("--extra", default="", help="extra compress arguments for every run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra)
    results: dict = {"cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    if "default" in args.scenarios:
        rep = compress(out / "default", [*extra], out / "default.log")
        r = brief(rep)
        if not rep.get("rc"):
            r["latency_ok"] = rep["measured_ratio"] <= 0.5 * 1.05
            r["acc_ok"] = r["drop_pt"] <= 1.0
            r["time_ok"] = rep["outside_wall_s"] < 600
        results["default"] = r
    if "sparsity" in args.scenarios:
        rep = compress(out / "sparsity", ["--sparsity", "0.6", "--reward", "accuracy", "--seed", str(args.seed),
                                          *extra], out / "sparsity.log")
        results["sparsity"] = brief(rep)
    if "rewards" in args.scenarios:
        results["rewards"] = {}
        for reward in ("latency", "accuracy", "flops"):
            rep = compress(out / f"reward-{reward}", ["--reward", reward, "--seed", str(args.seed), *extra],
                           out / f"reward-{reward}.log")
            results["rewards"][reward] = brief(rep)
    results["load_after"] = os.getloadavg()
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
