"""Layer-removal study: does removing whole conv layers of a plain VGG beat uniform width pruning at
equal measured latency, after the product's fine-tune?

The plan search removes residual blocks whole (depth plans) but has no removable unit in a plain
VGG. In a VGG-BN ``features`` sequence a unit Conv(c→c, 3×3, stride 1) + BatchNorm + ReLU whose
input is a ReLU output (directly or through max-pools) can be replaced by the identity: shapes stay
the same and the input is already non-negative. Before building that into the search, this study
asks whether it pays at all:

1. Each plan ``INDICES@SCALE`` removes the units whose convs sit at ``features[INDEX]`` (none for
   ``@SCALE``), then prunes the remaining groups uniformly at ``SCALE`` (``PlanSpace.keep_at`` along
   the uniform preferences, the profile's channel multiple, 10% minimum; L1 ranking for every plan).
2. All plans are measured together with the dense model in common interleaved windows (5 sessions
   5 s apart at the steady speed: the benchmark's statistic, ``latency.campaign.robust_ratios``).
3. Each plan gets the product's fine-tune (``compress`` defaults: 4 KD epochs from the dense model)
   per ``--kd-seeds`` seed and its accuracy on the whole test split; the JSON is rewritten after
   each fine-tune and finished ones are skipped when the command is run again.

    .venv/bin/python -m benchmarks.studies.study_vgg_layers --plans @0.4 30,33,36,43,46,49@0.7 \\
        --out benchmarks/plan_study/vgg19-w0.25_layers.json
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def removable_units(features: nn.Sequential) -> list[int]:
    """Indices of the convs in `features` whose unit Conv+BN+ReLU can be replaced by the identity:
    same in/out channels, odd square kernel with 'same' padding, stride 1, and a non-negative input
    (the nearest earlier layer that is not a max-pool or identity is a ReLU)."""
    layers = list(features)
    out = []
    for i, conv in enumerate(layers[:-2]):
        if not (isinstance(conv, nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d)
                and isinstance(layers[i + 2], nn.ReLU)):
            continue
        k = conv.kernel_size[0]
        if (conv.in_channels != conv.out_channels or conv.groups != 1 or conv.stride != (1, 1)
                or conv.kernel_size != (k, k) or k % 2 == 0 or conv.padding != (k // 2, k // 2)):
            continue
        before = [m for m in layers[:i] if not isinstance(m, (nn.MaxPool2d, nn.Identity))]
        if before and isinstance(before[-1], nn.ReLU):
            out.append(i)
    return out


def drop_units(model: nn.Module, indices: list[int]) -> nn.Module:
    """A copy of `model` with the units at `indices` of ``model.features`` replaced by the identity."""
    allowed = set(removable_units(model.features))
    bad = sorted(set(indices) - allowed)
    if bad:
        raise SystemExit(f"features[{bad[0]}] is not a removable conv unit; removable: {sorted(allowed)}.")
    new = copy.deepcopy(model)
    for i in indices:
        for j in (i, i + 1, i + 2):
            new.features[j] = nn.Identity()
    return new


def parse_plan(text: str) -> tuple[list[int], float]:
    """``"30,33@0.7"`` → ([30, 33], 0.7); ``"@0.4"`` → ([], 0.4)."""
    units, sep, scale = text.partition("@")
    try:
        if not sep:
            raise ValueError
        return [int(v) for v in units.split(",") if v], float(scale)
    except ValueError:
        raise SystemExit(f"plan {text!r} is not INDICES@SCALE (e.g. 30,33@0.7 or @0.4).") from None


def build_plan(dense: nn.Module, x: torch.Tensor, units: list[int], scale: float, multiple: int) -> tuple[nn.Module, list[int]]:
    """The plan's model (units removed, then every group pruned uniformly at `scale`) and its keep counts."""
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.pruning import prune
    from rlprune_edge.search.plan import PlanSpace, follower_groups

    base = drop_units(dense, units)
    groups = prunable_groups(base, x)
    names = [g.name for g in groups]
    space = PlanSpace.build(names, [g.channels for g in groups], [g.prunable for g in groups], multiple, 0.1,
                            follower_groups(base, x, groups))
    keep = space.keep_at(space.uniform_prefs(), scale)
    return prune(base, x, keep=dict(zip(names, keep, strict=True)), importance="l1", groups=groups), keep


def measure(profile, dense: nn.Module, models: dict[str, nn.Module], shape: tuple[int, ...]) -> dict[str, float]:
    """Every model's latency / dense, all in common interleaved windows."""
    from rlprune_edge.latency.campaign import robust_ratios
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.latency.steady import SteadyGate
    from rlprune_edge.onnx_io import export_onnx

    with tempfile.TemporaryDirectory(prefix="study-vgg-layers-") as tmp:
        d = export_onnx(copy.deepcopy(dense), Path(tmp) / "dense.onnx", shape, batch=1)
        paths = [export_onnx(m, Path(tmp) / f"p{i}.onnx", shape, batch=1) for i, m in enumerate(models.values())]
        ratios, _, _ = robust_ratios(get_backend(profile), profile, d, paths, sessions=5, pause_s=5.0,
                                     gate=SteadyGate.for_artifact(profile, d))
    return dict(zip(models, (float(r) for r in ratios), strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.studies.study_vgg_layers", description=__doc__.splitlines()[0])
    ap.add_argument("--plans", nargs="+", required=True, help="INDICES@SCALE, e.g. @0.4 30,33,36@0.7")
    ap.add_argument("--model", default=None, help="VGG checkpoint (default: the shipped VGG-19 w0.25)")
    ap.add_argument("--profile", default="host-cpu")
    ap.add_argument("--kd-seeds", default="0", help="comma-separated fine-tune seeds")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    from rlprune_edge.checkpoint import default_checkpoint_path, load_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.distill import DistillConfig, distill
    from rlprune_edge.flops import count_params
    from rlprune_edge.fsutil import atomic_write_json
    from rlprune_edge.profiles import load_profile
    from rlprune_edge.train import evaluate

    profile = load_profile(a.profile)
    dense, info = load_checkpoint(Path(a.model) if a.model else default_checkpoint_path())
    dense.eval()
    if not isinstance(getattr(dense, "features", None), nn.Sequential):
        raise SystemExit("this study needs a plain VGG (a model with a `features` sequence).")
    x = torch.zeros(1, *info.input_shape)
    specs = {p: parse_plan(p) for p in a.plans}
    built = {p: build_plan(dense, x, u, s, profile.pruning.channel_multiple) for p, (u, s) in specs.items()}
    doc = json.loads(a.out.read_text()) if a.out.is_file() else {}
    if doc.get("plans", {}).keys() != set(specs):  # another set of plans: measure them all together afresh
        ratios = measure(profile, dense, {p: m for p, (m, _) in built.items()}, tuple(info.input_shape))
        doc = {"model": info.model, "width": info.width, "profile": a.profile, "removable": removable_units(dense.features),
               "plans": {p: {"removed": specs[p][0], "scale": specs[p][1], "keep": built[p][1],
                             "params": int(count_params(built[p][0])), "ratio": ratios[p], "test_acc": {}}
                         for p in specs}}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(a.out, doc, indent=1)
    data = load_data("fashion-mnist", seed=0)
    if "dense_test_acc" not in doc:
        doc["dense_test_acc"] = float(evaluate(dense, data.loader("test", 500)))
        atomic_write_json(a.out, doc, indent=1)
    for seed in (int(s) for s in a.kd_seeds.split(",")):
        for p, (model, _) in built.items():
            row = doc["plans"][p]
            if str(seed) in row["test_acc"]:
                continue
            student = copy.deepcopy(model)
            torch.manual_seed(12345 + seed)
            t0 = time.perf_counter()
            distill(student, dense, data, DistillConfig(epochs=4, seed=seed), progress=False)
            row["test_acc"][str(seed)] = float(evaluate(student, data.loader("test", 500)))
            row.setdefault("kd_s", {})[str(seed)] = round(time.perf_counter() - t0, 1)
            atomic_write_json(a.out, doc, indent=1)
            print(f"{p:28s} {row['params']:8d} {row['ratio']:.3f}x  seed {seed}: {100 * row['test_acc'][str(seed)]:.2f}%",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
