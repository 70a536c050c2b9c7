"""`rlprune-edge export CKPT --profile NAME [--precision ...] --out DIR`: the deployable bundle."""

from __future__ import annotations

import argparse
import sys

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `export` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="verified ONNX / INT8 / TensorRT bundle with a manifest for a device profile",
        description=(
            "Export a checkpoint for a device profile: ONNX (opset 17, verified against PyTorch on "
            "validation images), INT8 (onnxruntime profiles) or a TensorRT engine (TensorRT profiles), "
            "a manifest.json with sha256, accuracy and latency, and classify.py for the board."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint (.pt) written by rlprune-edge")
    p.add_argument("--profile", required=True, help="device profile name or path to a .toml file")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default=None,
        help="bundle precision (default: the profile's runtime.precision)",
    )
    p.add_argument("--dynamic-batch", action="store_true", help="export a dynamic batch dimension")
    p.add_argument("--data", default=None, help="data spec for verification/calibration/accuracy "
                   "(default: the data recorded in the checkpoint)")
    p.add_argument("--out", required=True, help="bundle directory (replaced only after a successful export)")
    p.add_argument("--no-measure", action="store_true", help="skip timing the model on the profile")
    p.add_argument("--verify-images", type=int, default=500, help="validation images for the check (default 500)")
    p.add_argument("--calib-images", type=int, default=300, help="training images for INT8 calibration (default 300)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17..20 with this torch, default 17)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_own_model_flags(p, model_args=False)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and profile, build the bundle, print a summary."""
    import json

    from rlprune_edge.bundle import check_out_dir
    from rlprune_edge.checkpoint import load_checkpoint
    from rlprune_edge.export import export_bundle
    from rlprune_edge.limits import MAX_COUNT, check_count
    from rlprune_edge.onnx_io import check_opset
    from rlprune_edge.profiles import load_profile

    for flag, value, low in (("--verify-images", args.verify_images, 1), ("--calib-images", args.calib_images, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}.")
        check_count(value, flag, low, MAX_COUNT)
    if args.test_limit is not None and args.test_limit < 1:
        raise UserError(f"--test-limit must be >= 1, got {args.test_limit}.")
    check_count(args.test_limit, "--test-limit", 1, MAX_COUNT)
    check_opset(args.opset, name="--opset")
    check_out_dir(args.out)  # before the checkpoint, the data and the export: fail in a second, not minutes
    profile = load_profile(args.profile)
    model, info = load_checkpoint(args.checkpoint, arch=args.arch)
    try:
        manifest = export_bundle(
            model,
            info,
            profile,
            args.out,
            precision=args.precision or profile.runtime.precision,
            data=args.data,
            dynamic_batch=args.dynamic_batch,
            measure=not args.no_measure,
            verify_images=args.verify_images,
            calib_images=args.calib_images,
            test_limit=args.test_limit,
            opset=args.opset,
            log=lambda msg: print(f"export: {msg}", file=sys.stderr),
        )
    except OSError as exc:  # export_bundle names its own write failures; anything else still gets a sentence
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise UserError(f"export to --out {args.out} failed: {exc.strerror or exc}{where}; "
                        "check that the output location is writable and has free space.") from None
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    acc = manifest["accuracy"]
    line = f"{args.out}: {manifest['precision']} {manifest['model_file']} for {manifest['profile']}, test acc {acc['test_acc']:.4f}"
    if "fp32_test_acc" in acc:
        line += f" (fp32 {acc['fp32_test_acc']:.4f})"
    lat = manifest.get("latency")
    if lat:
        line += f", median {lat['median_ms']:.3f} ms (p90 {lat['p90_ms']:.3f})"
        if lat.get("speedup_vs_fp32"):
            line += f", {lat['speedup_vs_fp32']:.2f}x vs fp32"
    print(line)
    return 0
