"""`rlprune-edge inspect`: architecture, parameters, MACs and (when available) the prunable-groups table."""

from __future__ import annotations

import argparse

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `inspect` parser."""
    p = subparsers.add_parser("inspect", help="summarise a model or checkpoint",
                              description="Show a model's layers, parameter count, MACs at its input shape and "
                                          "the prunable channel groups.")
    p.add_argument("--model", default=None,
                   help="checkpoint path, zoo name, torchvision:NAME, timm:NAME, an .onnx file or your own FILE.py:FACTORY "
                        "(default: the embedded default model)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier for zoo names (default 1.0)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for a fresh model by name (default 10)")
    add_own_model_flags(p)
    p.add_argument("--layers", action="store_true", help="list every conv/linear layer with its shape and MACs")
    p.set_defaults(func=run)
    return p


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def layer_table(model, input_shape: tuple[int, int, int]) -> list[tuple[str, str, str, int]]:
    """(name, type, shape description, MACs) for every conv/linear layer, in execution order."""
    import torch

    from rlprune_edge.layers import filter_bank

    rows: list[tuple[str, str, str, int]] = []
    handles = []

    def hook_for(name: str):
        def hook(m, inp, out):
            bank = filter_bank(m)
            rows.append((name, type(m).__name__, bank.describe(m, out), int(bank.macs(m, inp[0], out))))
        return hook

    for name, m in model.named_modules():
        if filter_bank(m) is not None:
            handles.append(m.register_forward_hook(hook_for(name)))
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the summary to stdout."""
    import torch

    from rlprune_edge.checkpoint import MAX_CLASSES, check_width, resolve_model
    from rlprune_edge.flops import count_flops, count_params
    from rlprune_edge.train import ensure_default_model

    check_width(args.width)
    if args.num_classes is not None and not 1 <= args.num_classes <= MAX_CLASSES:
        raise UserError(f"--num-classes must be an integer in 1..{MAX_CLASSES}, got {args.num_classes}.")
    spec = args.model if args.model is not None else str(ensure_default_model())
    model, info = resolve_model(spec, width=args.width, num_classes=args.num_classes, name="--model",
                                model_args=args.model_args, arch=args.arch)
    shape = tuple(info.input_shape)
    try:
        macs = count_flops(model, shape)
    except (RuntimeError, ValueError) as exc:  # e.g. a header whose input shape is too small for the network
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{spec}: the model does not run on its recorded input shape {list(shape)} ({first}); "
                        "the checkpoint header is inconsistent, re-create it with `rlprune-edge train`.") from None
    params = count_params(model)
    print(f"model:        {info.model} (width {info.width:g}){' [pruned]' if info.layer_shapes else ''}")
    print(f"source:       {spec}")
    print(f"input shape:  {'x'.join(map(str, shape))}   classes: {info.num_classes}")
    print(f"parameters:   {params:,} ({_fmt(params)})")
    print(f"MACs/image:   {macs:,} ({_fmt(macs)})")
    for key in ("test_acc", "val_acc"):
        value = info.meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            print(f"{key}:{' ' * (13 - len(key))}{float(value):.4f}")
    if "imported_from" in info.meta:
        print(f"imported:     from {info.meta['imported_from']} (`rlprune-edge import`), data {info.meta.get('data', '?')}")
    elif "data" in info.meta:
        print(f"trained on:   {info.meta['data']} for {info.meta.get('epochs', '?')} epochs")
    rows = layer_table(model, shape)
    convs = sum(1 for r in rows if r[1] != "Linear")
    print(f"layers:       {convs} conv, {len(rows) - convs} linear")
    if args.layers:
        width = max(len(r[0]) for r in rows) if rows else 4
        print(f"\n{'layer':<{width}}  {'type':<8} {'shape':<34} {'MACs':>9}  share")
        for name, kind, desc, m in rows:
            print(f"{name:<{width}}  {kind:<8} {desc:<34} {_fmt(m):>9}  {m / max(macs, 1):6.1%}")
    from rlprune_edge.graph import prunable_groups

    groups = prunable_groups(model, torch.zeros(1, *shape))
    n_prunable = sum(1 for g in groups if g.prunable)
    print(f"\nprunable groups: {n_prunable} of {len(groups)}")
    width = max([len(g.name) for g in groups] + [5])
    print(f"{'group':<{width}}  {'channels':>8}  {'MACs share':>10}  prunable  note")
    for g in groups:
        note = "" if g.prunable else str(g.reason)
        print(f"{g.name:<{width}}  {g.channels:>8}  {g.flops_share:>10.1%}  {'yes' if g.prunable else 'no':<8}  {note}")
    return 0
