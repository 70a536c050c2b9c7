"""Small helpers shared by test modules (not fixtures)."""

from __future__ import annotations

import torch


def randomize_bn(model, seed: int):
    """Non-trivial BatchNorm statistics/affine so that a wrongly sliced BN shows in the outputs (in place)."""
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model
