"""CIFAR GoogLeNet (Inception v1 with BN, 32x32 input; the layout of kuangliu/pytorch-cifar)."""

from __future__ import annotations

import torch
from torch import nn

from rlprune_edge.models._common import conv_bn_relu, scale

# name -> (1x1, 3x3 reduce, 3x3, 5x5 reduce (as two 3x3), 5x5, pool proj); "M" = 3x3/2 max-pool
CONFIG: list[tuple[str, tuple[int, ...]] | str] = [
    ("a3", (64, 96, 128, 16, 32, 32)),
    ("b3", (128, 128, 192, 32, 96, 64)),
    "M",
    ("a4", (192, 96, 208, 16, 48, 64)),
    ("b4", (160, 112, 224, 24, 64, 64)),
    ("c4", (128, 128, 256, 24, 64, 64)),
    ("d4", (112, 144, 288, 32, 64, 64)),
    ("e4", (256, 160, 320, 32, 128, 128)),
    "M",
    ("a5", (256, 160, 320, 32, 128, 128)),
    ("b5", (384, 192, 384, 48, 128, 128)),
]


class Inception(nn.Module):
    """Four parallel branches concatenated along channels."""

    def __init__(self, cin: int, n1: int, n3r: int, n3: int, n5r: int, n5: int, npool: int) -> None:
        super().__init__()
        self.b1 = conv_bn_relu(cin, n1, 1)
        self.b2 = nn.Sequential(conv_bn_relu(cin, n3r, 1), conv_bn_relu(n3r, n3, 3))
        self.b3 = nn.Sequential(conv_bn_relu(cin, n5r, 1), conv_bn_relu(n5r, n5, 3), conv_bn_relu(n5, n5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(cin, npool, 1))
        self.out_channels = n1 + n3 + n5 + npool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    """GoogLeNet for 32x32 inputs: 3x3 stem (192 ch), 9 inception modules, global pool, linear."""

    def __init__(self, width: float = 1.0, num_classes: int = 10) -> None:
        super().__init__()
        stem = scale(192, width)
        self.pre_layers = conv_bn_relu(3, stem, 3)
        blocks: list[nn.Module] = []
        cin = stem
        for item in CONFIG:
            if item == "M":
                blocks.append(nn.MaxPool2d(3, stride=2, padding=1))
                continue
            _, sizes = item
            block = Inception(cin, *(scale(s, width) for s in sizes))
            blocks.append(block)
            cin = block.out_channels
        self.inceptions = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inceptions(self.pre_layers(x))
        return self.linear(torch.flatten(self.pool(x), 1))


def build_googlenet(name: str, width: float, num_classes: int) -> GoogLeNet:
    """GoogLeNet at channel multiplier `width`."""
    return GoogLeNet(width, num_classes)
