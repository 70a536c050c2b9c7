"""Re-measure a plan search's depth-calibration reading and its depth winner beside the uniform plan.

A plan run's ``search/plan_state.json`` records what the search measured: the fitted uniform plan,
each depth-calibration entry (the uniform plan and the removal sets, sized to its predicted
latency, read in the same windows) and the chosen plan's fit readings. This tool rebuilds those
models from the recorded keep counts and removed blocks (L1 pruning, no fine-tune: only latency
is measured) and reads them again with the search's own statistic (``robust_ratios``, 3 sessions
counting only sessions at the steady speed):

1. calibration entry ``--entry`` replayed as the search measured it (uniform first, then the sets),
   once more in reversed order, and once more as recorded; each set's reading relative to uniform
   beside the recorded one;
2. the uniform plan, the last calibration reading's plan of the winner's removal set and the
   plans of the winner's fit readings, together, ``--repeats`` times.

It answers whether a depth winner that reads slower than its calibration said is slower because of
its widths or because the machine's state moved between the readings (BENCHMARKS.md, "the
depth-plan latency prediction, examined").

    .venv/bin/python -m benchmarks.studies.study_depth_readings \\
        --run benchmarks/milan/benchmarks/runs/search/mobilenetv3_large-w0.5_aggressive_seed1_plan \\
        --model benchmarks/milan/benchmarks/models/mobilenetv3_large_w0.5_e5_fashion-mnist.pt
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def _plans(state: dict[str, Any], entry: int) -> tuple[dict[str, tuple[list[int], list[str]]], dict[str, float],
                                                       dict[str, tuple[list[int], list[str]]]]:
    """(calibration entry's plans, their recorded readings relative to uniform, the winner's plans)."""
    uniform = [m for m in state["measurements"] if not m.get("removed")][-1]["keep"]
    cal = state["depth_calibration"][entry]
    replay = {"uniform": (uniform, [])}
    recorded = {"uniform": 1.0}
    for p in cal["plans"]:
        label = f"-{len(p['removed'])}"
        replay[label] = (p["keep"], p["removed"])
        recorded[label] = p["ratio"] / cal["uniform_ratio"]
    winners = {"uniform": (uniform, [])}
    fits = [m for m in state["measurements"] if m.get("removed") and not m.get("repeat")]
    if fits:
        shared = sorted(fits[0]["removed"])
        same = [p for c in state["depth_calibration"] for p in c["plans"] if sorted(p["removed"]) == shared]
        if same:
            winners["calibration set"] = (same[-1]["keep"], same[-1]["removed"])
        for m in fits:
            winners[f"winner fit try {m['try']}"] = (m["keep"], m["removed"])
    return replay, recorded, winners


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.studies.study_depth_readings", description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a plan run's directory (holds search/plan_state.json)")
    ap.add_argument("--model", type=Path, required=True, help="the dense checkpoint the run pruned")
    ap.add_argument("--entry", type=int, default=1, help="depth-calibration entry to replay (default 1)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", default="host-cpu")
    a = ap.parse_args(argv)

    import torch

    from rlprune_edge.blocks import drop_blocks
    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.latency.campaign import robust_ratios
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.pruning import prune

    state_path = a.run / "search" / "plan_state.json"
    if not state_path.is_file() or not a.model.is_file():
        missing = state_path if not state_path.is_file() else a.model
        print(f"error: {missing} does not exist; --run takes a plan run's directory (it holds "
              "search/plan_state.json) and --model the dense checkpoint that run pruned.", file=sys.stderr)
        return 2
    state = json.loads(state_path.read_text())
    if not 0 <= a.entry < len(state.get("depth_calibration", [])):
        print(f"error: --entry {a.entry}: {state_path} holds {len(state.get('depth_calibration', []))} "
              "depth-calibration entries (a run without depth plans holds none); pick one of them.", file=sys.stderr)
        return 2
    replay, recorded, winners = _plans(state, a.entry)
    profile = load_profile(a.profile)
    dense, info = load_checkpoint(a.model)
    dense.eval()
    x = torch.zeros(1, *info.input_shape)
    groups = prunable_groups(dense, x)
    names = [g.name for g in groups]
    shape = tuple(info.input_shape)
    with tempfile.TemporaryDirectory(prefix="depth-readings-") as tmp:
        d = export_onnx(copy.deepcopy(dense), Path(tmp) / "dense.onnx", shape, batch=1)
        paths: dict[str, Path] = {}
        for i, (label, (keep, removed)) in enumerate({**replay, **winners}.items()):
            model = prune(dense, x, keep=dict(zip(names, keep, strict=True)), importance="l1", groups=groups)
            drop_blocks(model, removed)
            paths[label] = export_onnx(model, Path(tmp) / f"p{i}.onnx", shape, batch=1)

        backend, gate = get_backend(profile), SteadyGate.for_artifact(profile, d)

        def read(labels: list[str]) -> dict[str, float]:
            ratios, _, _ = robust_ratios(backend, profile, d, [paths[n] for n in labels], gate=gate)
            r = dict(zip(labels, ratios, strict=True))
            return {n: r[n] / r["uniform"] for n in labels}

        order = list(replay)
        for label, labels in (("as recorded", order), ("reversed", order[::-1]), ("as recorded", order)):
            r = read(labels)
            print(f"entry {a.entry} {label:12s} " + "  ".join(f"{n} {r[n]:.3f} (rec {recorded[n]:.3f})" for n in order))
        for i in range(max(1, a.repeats)):
            r = read(list(winners))
            print(f"together {i}: " + "  ".join(f"{n} {v:.3f}" for n, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
