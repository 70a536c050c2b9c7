"""Base-model training (SGD + momentum, cosine LR, crop/flip augmentation, best-on-val weights) and evaluation.

Also ``ensure_default_model``: the default checkpoint, trained into the user cache when an install lacks it.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune_edge.checkpoint import (
    DEFAULT_DATA,
    DEFAULT_EPOCHS,
    DEFAULT_FILENAME,
    DEFAULT_MODEL,
    DEFAULT_WIDTH,
    ModelInfo,
    cache_dir,
    check_writable,
    default_checkpoint_path,
    save_checkpoint,
)
from rlprune_edge.data import DataBundle, load_data
from rlprune_edge.errors import UserError
from rlprune_edge.models import build_model


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of `model` over `loader`; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    correct = total = 0
    try:
        for x, y in loader:
            pred = model(x.to(device)).argmax(1)
            correct += int((pred.cpu() == y).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    return correct / total if total else 0.0


def _train_epoch(model: nn.Module, bar: Any, optimizer: Any, scheduler: Any, loss_fn: Any) -> tuple[float, int, int]:
    """One pass over the (progress-wrapped) training batches; returns (summed loss, correct, seen)."""
    model.train()
    loss_sum = 0.0
    correct = seen = 0
    for x, y in bar:
        out = model(x)
        loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = int(y.numel())
        loss_sum += float(loss.detach()) * n
        correct += int((out.argmax(1) == y).sum())
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    return loss_sum, correct, seen


def train_model(
    model: nn.Module,
    data: DataBundle,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train `model` in place and leave it holding the best-on-validation weights.

    Returns ``{"best_val_acc", "best_epoch", "epochs", "wall_s", "history": [{epoch, train_loss,
    train_acc, val_acc, lr, wall_s}]}``. `on_epoch_end(epoch, stats)` is called after each epoch
    (1-based) with that epoch's history entry plus ``is_best``.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"epochs must be a positive integer, got {epochs!r}.")
    if not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"learning rate must be a positive number, got {lr!r}.")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}.")
    if len(data.train) == 0:
        raise UserError(f"the training split of {data.spec} is empty.")
    from rlprune_edge.progress import progress_bar

    torch.manual_seed(seed)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=0.9, nesterov=True,
    )
    train_loader = data.loader("train", batch_size, shuffle=True, augment=True, seed=seed)
    val_loader = data.loader("val", 512)
    steps = epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_fn = nn.CrossEntropyLoss()
    best_acc, best_epoch, best_state = -1.0, 0, None
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        bar = progress_bar(train_loader, desc=f"epoch {epoch}/{epochs}", unit="batch", disable=not progress,
                           leave=True)
        loss_sum, correct, seen = _train_epoch(model, bar, optimizer, scheduler, loss_fn)
        val_acc = evaluate(model, val_loader) if len(data.val) else correct / max(seen, 1)
        is_best = val_acc > best_acc
        if is_best:
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
        stats = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                 "val_acc": val_acc, "lr": optimizer.param_groups[0]["lr"],
                 "wall_s": time.perf_counter() - start}
        history.append(stats)
        if progress:
            bar.write(f"epoch {epoch}/{epochs}: loss {stats['train_loss']:.4f}  train acc {stats['train_acc']:.4f}  "
                      f"val acc {val_acc:.4f}{'  (best)' if is_best else ''}", file=sys.stderr)
        bar.close()
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**stats, "is_best": is_best})
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best_val_acc": best_acc, "best_epoch": best_epoch, "epochs": epochs,
            "wall_s": time.perf_counter() - start, "history": history}


def ensure_default_model(progress: bool = True) -> Path:
    """Path of the default checkpoint: the shipped asset, else the cached one, else trained now into the cache."""
    shipped = default_checkpoint_path()
    if shipped.is_file():
        return shipped
    cached = cache_dir() / DEFAULT_FILENAME
    if cached.is_file():
        return cached
    print(f"rlprune-edge: the default model is not shipped with this install; training {DEFAULT_MODEL} "
          f"width {DEFAULT_WIDTH} on {DEFAULT_DATA} for {DEFAULT_EPOCHS} epochs into {cached} "
          "(once; tens of minutes on a small CPU).", file=sys.stderr)
    check_writable(cached)
    data = load_data(DEFAULT_DATA)
    model = build_model(DEFAULT_MODEL, DEFAULT_WIDTH, data.num_classes)
    result = train_model(model, data, epochs=DEFAULT_EPOCHS, progress=progress)
    test_acc = evaluate(model, data.loader("test", 256))
    info = ModelInfo(DEFAULT_MODEL, DEFAULT_WIDTH, data.num_classes, data.input_shape, tuple(data.mean),
                     tuple(data.std), list(data.class_names),
                     meta={"val_acc": result["best_val_acc"], "test_acc": test_acc, "epochs": DEFAULT_EPOCHS,
                           "wall_s": result["wall_s"], "data": DEFAULT_DATA})
    save_checkpoint(cached, model, info)
    return cached
