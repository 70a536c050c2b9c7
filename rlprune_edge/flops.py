"""Multiply-accumulate (MAC) and parameter counts."""

from __future__ import annotations

import torch
from torch import nn


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs for one image of `input_shape` (C, H, W): Conv (all dims, grouped) and Linear layers.

    Counted with forward hooks on a single zero image in eval mode; element-wise ops (BN, activations,
    pooling, additions) are not counted, as is usual for "FLOPs" tables.
    """
    total = 0

    def conv_hook(m: nn.modules.conv._ConvNd, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        kernel = 1
        for k in m.kernel_size:
            kernel *= int(k)
        total += out[0].numel() * (m.in_channels // m.groups) * kernel

    def linear_hook(m: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
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
