"""Multiply-accumulate (MAC) and parameter counts (the MACs of each layer type: ``layers.py``)."""

from __future__ import annotations

import torch
from torch import nn

from rlprune_edge.layers import filter_bank


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs for one image of `input_shape` (C, H, W): the filter banks (Conv of all dims, grouped and
    transposed, and Linear layers; ``layers.Handler.macs``).

    Counted with forward hooks on a single zero image in eval mode; element-wise ops (BN, activations,
    pooling, additions) are not counted, as is usual for "FLOPs" tables.
    """
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if inp and isinstance(inp[0], torch.Tensor) and isinstance(out, torch.Tensor):
            total += filter_bank(m).macs(m, inp[0], out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if filter_bank(m) is not None]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total)


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))
