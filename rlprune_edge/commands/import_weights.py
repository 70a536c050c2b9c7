"""`rlprune-edge import`: a state_dict trained elsewhere, or an ONNX classifier, → an rlprune-edge checkpoint
`compress` can take."""

from __future__ import annotations

import argparse
import sys

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.outputs import add_force_flag, quote


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `import` parser."""
    p = subparsers.add_parser(
        "import", help="import weights trained elsewhere (a state_dict file or an ONNX model) as a checkpoint",
        description="Rebuild a zoo or torchvision architecture with weights you trained yourself "
        "(torch.save(model.state_dict(), PATH); wrappers such as {'state_dict': ...} and key prefixes such as "
        "'module.' are handled), evaluate it on the data it will be compressed with, and write an rlprune-edge "
        "checkpoint atomically. The file is read with torch.load(weights_only=True). An .onnx file carries its "
        "architecture (no --model): it is converted with onnx2torch (pip install 'rlprune-edge[onnx]') and checked "
        "against ONNX Runtime; its checkpoint reloads with --arch FILE.onnx.")
    p.add_argument("weights", help="the weights file (.pt/.pth) holding a state_dict, or an .onnx classifier")
    p.add_argument("--model", default=None, help="the architecture (required for a weights file): a zoo name (vgg19, "
                   "resnet20, ...), torchvision:NAME, timm:NAME, or your own FILE.py:FACTORY / package.module:FACTORY")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of a zoo architecture (default 1.0)")
    p.add_argument("--data", default="fashion-mnist",
                   help="the data the model was trained on: fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, "
                        "imagefolder:DIR (32x32) or imagefolder@SIZE:DIR at the size it was trained at (default "
                        "fashion-mnist); it sets the classes, the normalisation, the input size and "
                        "the test set the import is checked on")
    p.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    add_force_flag(p, "an rlprune-edge checkpoint")
    add_own_model_flags(p)
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # tests / smoke runs
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Validate, import, print what was done and the test accuracy."""
    from rlprune_edge.checkpoint import check_writable
    from rlprune_edge.data import load_data
    from rlprune_edge.errors import UserError
    from rlprune_edge.models.onnx_in import is_onnx_spec
    from rlprune_edge.models.user import parse_model_args
    from rlprune_edge.weights_import import check_architecture, import_checkpoint, read_state_dict

    if args.limit is not None and args.limit < 2:
        raise UserError(f"--limit must be at least 2, got {args.limit}.")
    if is_onnx_spec(args.weights):
        return _run_onnx(args)
    if args.model is None:
        raise UserError(f"import {args.weights} needs --model ARCH, the architecture the weights belong to (a zoo "
                        "name, torchvision:NAME, timm:NAME or FILE.py:FACTORY); only an .onnx file carries its own.")
    check_architecture(args.model, args.width)  # bad flags and files are refused before the data loads
    if args.arch is not None:
        raise UserError("--arch is for reloading a checkpoint of your own model class; import takes the class as "
                        "--model FILE.py:FACTORY.")
    if args.model_args is not None:
        parse_model_args(args.model_args)  # bad syntax refused before the data loads
    out = check_writable(args.out, flag="--out", force=args.force, inputs=[args.weights])
    read = read_state_dict(args.weights)
    data = load_data(args.data, limit=args.limit)
    result = import_checkpoint(args.weights, args.model, args.width, data, out, read=read, force=args.force,
                               model_args=args.model_args)
    how = []
    if result.wrapper_key:
        how.append(f"state_dict under {result.wrapper_key!r}")
    if result.stripped_prefix:
        how.append(f"key prefix {result.stripped_prefix!r} removed")
    how.extend(result.notes)
    print(f"imported {args.weights} as {args.model}" + (f" (width {args.width:g})" if args.width != 1.0 else "")
          + (f"; {'; '.join(how)}" if how else ""))
    _summary(args, data, result, out, "")
    return 0


def _run_onnx(args: argparse.Namespace) -> int:
    """`import model.onnx --out model.pt`: the file's own architecture and weights, checked against ONNX Runtime."""
    from rlprune_edge.checkpoint import check_writable
    from rlprune_edge.data import load_data
    from rlprune_edge.errors import UserError
    from rlprune_edge.models.onnx_in import onnx_record, require_onnx2torch
    from rlprune_edge.weights_import import import_onnx

    for flag, given in (("--model", args.model is not None), ("--width", args.width != 1.0),
                        ("--model-args", args.model_args is not None), ("--arch", args.arch is not None)):
        if given:
            raise UserError(f"{flag} does not apply to an ONNX file: {args.weights} carries its own architecture and "
                            f"weights, so leave {flag} out.")
    out = check_writable(args.out, flag="--out", force=args.force, inputs=[args.weights])
    require_onnx2torch(args.weights)  # a missing package, file or an oversized one refused before the data loads
    onnx_record(args.weights)
    data = load_data(args.data, limit=args.limit)
    result = import_onnx(args.weights, data, out, force=args.force)
    print(f"imported {args.weights} (ONNX, converted with onnx2torch; {'; '.join(result.notes)})")
    _summary(args, data, result, out, f" --arch {quote(result.info.source['spec'])}")
    return 0


def _summary(args: argparse.Namespace, data, result, out, arch: str) -> None:
    """Parameters, test accuracy, a warning at chance level and the next command (every import route)."""
    from rlprune_edge.flops import count_params

    print(f"{count_params(result.model):,} parameters; test accuracy on {args.data}: {result.test_acc:.4f} "
          f"({len(data.test):,} images); saved {out}")
    if result.at_chance:
        print(f"warning: {result.test_acc:.1%} is close to chance for {data.num_classes} classes: the weights may "
              f"expect another normalisation (rlprune-edge feeds {args.data} with mean {list(data.mean)}, std "
              f"{list(data.std)}) or another class order ({', '.join(data.class_names[:3])}, ...).", file=sys.stderr)
    print(f"next: rlprune-edge compress --model {quote(out)}{arch} --profile NAME --target-latency 0.5x")
