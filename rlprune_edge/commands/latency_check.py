"""`rlprune-edge latency-check`: fit the latency model and check it against real measurements."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlprune_edge.errors import UserError
from rlprune_edge.fsutil import atomic_write_json, probe_writable


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("latency-check", help="fit the latency model and measure random variants for real",
                              description="Fit (or load from the cache) the latency model of a model on a profile, "
                                          "measure N random pruned variants and report predicted vs measured.")
    p.add_argument("--model", required=True, help="checkpoint path or model name (e.g. vgg19)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier for a model name (default 1.0)")
    p.add_argument("--profile", default="host-cpu", help="profile name or path to a .toml file")
    p.add_argument("--variants", type=int, default=30, help="random variants to measure (default 30)")
    p.add_argument("--fit-variants", type=int, default=16, help="variants profiled to fit the model (default 16)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default: min(profile, 100))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refit", action="store_true", help="ignore a cached latency model")
    p.add_argument("--json", dest="json_out", required=True, metavar="OUT", help="write the results here")
    p.set_defaults(func=run)
    return p


def _check_json_out(out: Path) -> Path:
    """--json must name a file that can be created, checked before minutes of measuring."""
    if not out.parent.exists() and str(out.parent):
        raise UserError(f"directory {out.parent} for --json does not exist; create it first.")
    if out.is_dir():
        raise UserError(f"--json {out} is a directory; give a file name such as {out / 'latency-check.json'}.")
    if out.exists() and not out.is_file():
        raise UserError(f"--json {out} exists and is not a regular file; give a file path.")
    if not out.parent.is_dir():
        raise UserError(f"--json {out}: {out.parent} is not a directory; give a path inside a directory.")
    try:
        probe_writable(out)
    except OSError as exc:
        raise UserError(f"cannot write --json {out}: {exc.strerror or exc}; choose a writable location.") from None
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from rlprune_edge.checkpoint import check_width, resolve_model
    from rlprune_edge.graph import prunable_groups
    from rlprune_edge.latency.cache import get_or_fit, model_path
    from rlprune_edge.latency.campaign import check_model
    from rlprune_edge.latency.registry import get_backend
    from rlprune_edge.profiles import load_profile

    if args.variants < 1 or args.fit_variants < 2:
        raise UserError("--variants must be >= 1 and --fit-variants >= 2.")
    check_width(args.width)
    if args.runs is not None and args.runs < 1:
        raise UserError(f"--runs must be at least 1, got {args.runs}; leave it out to use min(profile, 100).")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}.")
    out = _check_json_out(Path(args.json_out))
    profile = load_profile(args.profile)
    backend = get_backend(profile)
    model, info = resolve_model(args.model, width=args.width, name="--model")
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
    try:
        atomic_write_json(out, result, indent=1)
    except OSError as exc:
        raise UserError(f"cannot write --json {out}: {exc.strerror or exc}; choose a writable file path "
                        "(the measurements were not saved).") from None
    print(f"{args.model} on {profile.name}: median |rel error| {result['median_abs_rel_error']:.1%}, "
          f"p90 {result['p90_abs_rel_error']:.1%} over {args.variants} variants -> {out}")
    return 0
