"""`rlprune-edge train`: train a zoo/torchvision model on a dataset and save the best-on-val checkpoint."""

from __future__ import annotations

import argparse
import math
import time

from rlprune_edge.commands import add_own_model_flags
from rlprune_edge.errors import UserError
from rlprune_edge.outputs import add_force_flag

MAX_SEED = 2**31 - 1  # as `compress --seed`; the data loaders derive per-pass seeds that must fit int64
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `train` parser."""
    p = subparsers.add_parser(
        "train", help="train a base model", description="Train a model with SGD + cosine LR and save the "
        "best-on-validation checkpoint (atomically; an interrupted run leaves an existing file intact).")
    p.add_argument("--model", required=True, help="zoo name (vgg19, resnet20, ...), torchvision:NAME, timm:NAME, or your own "
                   "FILE.py:FACTORY / package.module:FACTORY (a class or a function returning an nn.Module)")
    add_own_model_flags(p)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier for zoo models (default 1.0)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist[:DIR], cifar10:DIR, cifar100:DIR, imagefolder:DIR (32x32) or imagefolder@SIZE:DIR "
                        "(default fashion-mnist)")
    p.add_argument("--epochs", type=int, required=True, help="number of epochs")
    p.add_argument("--out", required=True, help="checkpoint path to write (.pt)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # tests / smoke runs
    p.add_argument("--save-each-epoch", action="store_true",
                   help="also write the best-so-far checkpoint (atomically) after every epoch that improves val "
                        "accuracy, so a long run interrupted later still leaves a usable model in --out")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy shared machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_force_flag(p, "an rlprune-edge checkpoint")
    p.set_defaults(func=run)
    return p


def _own_model(args: argparse.Namespace) -> bool:
    """True for `--model FILE.py:FACTORY` (its --model-args checked before the data loads); UserError for
    --arch, --width with it, or --model-args without it."""
    from rlprune_edge.models.user import is_user_spec, parse_model_args

    if args.arch is not None:
        raise UserError("--arch is for reloading a checkpoint of your own model class; train takes the class as "
                        "--model FILE.py:FACTORY.")
    if not is_user_spec(args.model):
        if args.model_args is not None:
            raise UserError(f"--model-args applies only to a model class of your own (FILE.py:FACTORY), not to {args.model}.")
        return False
    parse_model_args(args.model_args)
    if args.width != 1.0:
        raise UserError(f"--width applies only to the built-in zoo, not to {args.model}; pass your own width "
                        "through --model-args.")
    return True


def _build(args: argparse.Namespace, data, own: bool) -> tuple:
    """(model at the data's input size, the source record of your own class or None)."""
    from rlprune_edge.checkpoint import resolve_model
    from rlprune_edge.models import adopt_input_shape, build_model

    if own:
        model, info = resolve_model(args.model, data=data, model_args=args.model_args, name="--model")
        return model, info.source
    model = build_model(args.model, args.width, data.num_classes)
    adopt_input_shape(model, tuple(data.input_shape), args.model)
    return model, None


def run(args: argparse.Namespace) -> int:
    """Validate, train, evaluate on test once, save atomically, print the test accuracy."""
    from rlprune_edge.checkpoint import ModelInfo, check_width, check_writable, save_checkpoint
    from rlprune_edge.data import load_data
    from rlprune_edge.limits import MAX_THREADS, check_count
    from rlprune_edge.models import (
        ZOO_NAMES,
        build_model,
        check_weights_fit,
        is_model_name,
    )
    from rlprune_edge.train import evaluate, train_model

    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}.")
    check_count(args.epochs, "--epochs", 1, MAX_EPOCHS)
    check_width(args.width)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    check_count(args.batch_size, "--batch-size", 1, MAX_BATCH_SIZE)
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number, got {args.lr}.")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise UserError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}; use e.g. 5e-4.")
    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed must be an integer in 0..{MAX_SEED}, got {args.seed}.")
    if args.limit is not None and args.limit < 2:
        raise UserError(f"--limit must be at least 2, got {args.limit}.")
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must be an integer in 1..{MAX_THREADS}, got {args.threads}.")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    own = _own_model(args)  # your own class: checked when it is built on the data
    if not own and not is_model_name(args.model):
        build_model(args.model, args.width)  # raises UserError listing the valid names, before data loads
    elif not own and args.model in ZOO_NAMES:
        check_weights_fit(args.model, float(args.width), 10)  # a width too large for memory, before data loads
    out = check_writable(args.out, flag="--out", force=args.force)
    data = load_data(args.data, seed=args.seed, limit=args.limit)
    model, source = _build(args, data, own)
    print(f"training {args.model} (width {args.width:g}) on {args.data}: {len(data.train)} train, {len(data.val)} val, "
          f"{len(data.test)} test images, {args.epochs} epochs", flush=True)
    start = time.perf_counter()

    def save(result: dict, epochs_done: int) -> float:
        test_acc = evaluate(model, data.loader("test", 512))
        info = ModelInfo(args.model, float(args.width), data.num_classes, tuple(data.input_shape), tuple(data.mean),
                         tuple(data.std), list(data.class_names),
                         meta={"val_acc": result["best_val_acc"], "best_epoch": result["best_epoch"],
                               "test_acc": test_acc, "epochs": args.epochs, "epochs_done": epochs_done,
                               "wall_s": round(time.perf_counter() - start, 1), "data": args.data, "lr": args.lr,
                               "batch_size": args.batch_size, "seed": args.seed,
                               "torch_threads": torch.get_num_threads(),
                               "history": [{k: round(float(v), 5) for k, v in h.items()} for h in result["history"]]},
                         source=source)
        save_checkpoint(out, model, info, flag="--out", force=args.force)
        return test_acc

    history: list[dict] = []

    def on_epoch_end(epoch: int, stats: dict) -> None:
        history.append({k: v for k, v in stats.items() if k != "is_best"})
        if args.save_each_epoch and stats["is_best"] and epoch < args.epochs:
            acc = save({"best_val_acc": stats["val_acc"], "best_epoch": epoch, "history": history}, epoch)
            print(f"epoch {epoch}: saved best-so-far checkpoint to {out} (test acc {acc:.4f})", flush=True)

    result = train_model(model, data, args.epochs, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay, seed=args.seed, progress=not args.quiet,
                         on_epoch_end=on_epoch_end)
    test_acc = save(result, args.epochs)
    wall = time.perf_counter() - start
    print(f"best val acc {result['best_val_acc']:.4f} (epoch {result['best_epoch']}); "
          f"test acc {test_acc:.4f}; wall {wall:.0f} s; saved {out}")
    return 0
