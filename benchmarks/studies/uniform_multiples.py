"""How fast are the uniform plans at each channel multiple? (the evidence for host-cpu's multiple)

For each multiple in ``--multiples``: the floor (every group at max(multiple, 10% of its width))
and every distinct uniform plan at scales 0.10…0.60, all pruned from one checkpoint (L1, no
fine-tune: only latency is measured) and measured together with the dense model in common
interleaved windows, 5 sessions 5 s apart counting only sessions at the steady speed (the
benchmark's statistic, ``latency.campaign.robust_ratios``). Prints one row per plan (parameters,
ratio to dense, the distinct widths) and writes them as JSON.

    .venv/bin/python -m benchmarks.studies.uniform_multiples --out benchmarks/milan8/uniform_plans_m8_m16.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path


def uniform_plans(space, multiple: int) -> dict[str, list[int]]:
    """{label: keep} of the floor and the distinct uniform plans at scales 0.10…0.60."""
    import numpy as np

    plans = {f"floor m{multiple}": space.floor_keep()}
    for s in np.linspace(0.1, 0.6, 26):
        keep = space.keep_at(space.uniform_prefs(), float(s))
        if keep not in plans.values():
            plans[f"m{multiple} s{s:.2f}"] = keep
    return plans


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.studies.uniform_multiples", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped VGG-19 w0.25)")
    ap.add_argument("--profile", default="host-cpu")
    ap.add_argument("--multiples", default="8,16")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    import torch

    from rlprune_edge.checkpoint import default_checkpoint_path, load_checkpoint
    from rlprune_edge.flops import count_params
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.latency.campaign import robust_ratios
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.onnx_io import export_onnx
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.pruning import prune
    from rlprune_edge.search.plan import PlanSpace, follower_groups

    profile = load_profile(a.profile)
    dense, info = load_checkpoint(Path(a.model) if a.model else default_checkpoint_path())
    dense.eval()
    x = torch.zeros(1, *info.input_shape)
    groups = prunable_groups(dense, x)
    names = [g.name for g in groups]
    plans: dict[str, list[int]] = {}
    for m in (int(v) for v in a.multiples.split(",")):
        space = PlanSpace.build(names, [g.channels for g in groups], [g.prunable for g in groups], m, 0.1,
                                follower_groups(dense, x, groups))
        plans.update(uniform_plans(space, m))
    shape = tuple(info.input_shape)
    with tempfile.TemporaryDirectory(prefix="uniform-multiples-") as tmp:
        d = export_onnx(copy.deepcopy(dense), Path(tmp) / "dense.onnx", shape, batch=1)
        paths, params = [], {}
        for i, (label, keep) in enumerate(plans.items()):
            model = prune(dense, x, keep=dict(zip(names, keep, strict=True)), importance="l1", groups=groups)
            params[label] = int(count_params(model))
            paths.append(export_onnx(model, Path(tmp) / f"p{i}.onnx", shape, batch=1))
        ratios, dense_ms, _ = robust_ratios(get_backend(profile), profile, d, paths, sessions=5, pause_s=5.0,
                                            gate=SteadyGate.for_artifact(profile, d))
    rows = sorted(zip(plans, ratios, strict=True), key=lambda r: params[r[0]])
    for label, r in rows:
        print(f"{label:12s} {params[label]:8d} {r:.3f} {sorted(set(plans[label]))}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"dense_ms": dense_ms, "profile": a.profile,
                                 "rows": [(n, params[n], r, plans[n]) for n, r in rows]}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
