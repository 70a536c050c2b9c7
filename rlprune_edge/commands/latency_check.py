"""`rlprune-edge latency-check`: fit the latency model and check it against real measurements."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.errors import UserError
from rlprune_edge.outputs import add_force_flag, check_file_output, json_tool_is, write_file

TOOL = "rlprune-edge latency-check"  # the JSON's tool key: what makes an existing --json file ours
RECOGNISE = json_tool_is(TOOL, "variants", "median_abs_rel_error")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("latency-check", help="fit the latency model and measure random variants for real",
                              description="Fit (or load from the cache) the latency model of a model on a profile, "
                                          "measure N random pruned variants and report predicted vs measured.")
    p.add_argument("--model", required=True, help="checkpoint path or model name (e.g. vgg19)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier for a model name (default 1.0)")
    add_own_model_flags(p)
    p.add_argument("--profile", default="host-cpu", help="profile name or path to a .toml file")
    p.add_argument("--variants", type=int, default=30, help="random variants to measure (default 30)")
    p.add_argument("--fit-variants", type=int, default=16, help="variants profiled to fit the model (default 16)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default: min(profile, 100))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refit", action="store_true", help="ignore a cached latency model")
    p.add_argument("--json", dest="json_out", required=True, metavar="OUT", help="write the results here")
    add_force_flag(p, "a latency-check result")
    p.set_defaults(func=run)
    return p


def _check_json_out(out: Path, force: bool = False) -> Path:
    """--json must name a file that can be created under the output rule, checked before minutes of measuring."""
    if str(out.parent) and not out.parent.exists() and not out.parent.is_symlink():
        raise UserError(f"directory {out.parent} for --json does not exist; create it first.")
    if out.parent.exists() and not out.parent.is_dir():
        raise UserError(f"--json {out}: {out.parent} is not a directory; give a path inside a directory.")
    return check_file_output(out, flag="--json", what="rlprune-edge latency-check result", recognise=RECOGNISE,
                             force=force, example="latency-check.json")


def run(args: argparse.Namespace) -> int:
    import torch

    from rlprune_edge.checkpoint import check_width, resolve_model
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.latency.cache import get_or_fit, model_path
    from rlprune_edge.latency.campaign import check_model
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.limits import MAX_VARIANTS, check_count
    from rlprune_edge.profiles import load_profile

    if args.variants < 1 or args.fit_variants < 2:
        raise UserError("--variants must be >= 1 and --fit-variants >= 2.")
    check_count(args.variants, "--variants", 1, MAX_VARIANTS)  # before a fit that can take minutes
    check_width(args.width)
    if args.runs is not None and args.runs < 1:
        raise UserError(f"--runs must be at least 1, got {args.runs}; leave it out to use min(profile, 100).")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}.")
    out = _check_json_out(Path(args.json_out), args.force)
    profile = load_profile(args.profile)
    backend = get_backend(profile)
    model, info = resolve_model(args.model, width=args.width, name="--model", model_args=args.model_args,
                                arch=args.arch)
    model.eval()
    shape = tuple(profile.input.shape) or tuple(info.input_shape)
    example = torch.randn(1, *shape)
    groups = prunable_groups(model, example)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    lm = get_or_fit(model, example, groups, backend, profile, n_variants=args.fit_variants, seed=args.seed,
                    refit=args.refit, runs=args.runs, progress=progress)
    result = check_model(lm, model, example, groups, backend, profile, args.variants, seed=args.seed + 1000,
                         runs=args.runs, progress=progress)
    result.update(model=args.model, width=args.width, latency_model=str(model_path(profile, lm.arch_hash)))
    result = {"tool": TOOL, **result}
    payload = (json.dumps(result, indent=1) + "\n").encode()
    write_file(out, lambda tmp: tmp.write_bytes(payload), flag="--json", what="rlprune-edge latency-check result",
               recognise=RECOGNISE, force=args.force)
    print(f"{args.model} on {profile.name}: median |rel error| {result['median_abs_rel_error']:.1%}, "
          f"p90 {result['p90_abs_rel_error']:.1%} over {args.variants} variants -> {out}")
    return 0
