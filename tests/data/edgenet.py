"""A small edge CNN as a user would write it in their own file (used by tools/bench_byo.py):
inverted-residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, residual add), Hardswish,
adaptive pooling and a linear head. ``--model tests/data/edgenet.py:EdgeNet --model-args width=32``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.Hardswish())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(conv_bn(cin, mid), conv_bn(mid, mid, 3, stride, groups=mid),
                                  conv_bn(mid, cout, act=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class EdgeNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.stem = conv_bn(3, w, 3, stride=1)
        self.stages = nn.Sequential(
            InvertedResidual(w, w, 1), InvertedResidual(w, 2 * w, 2), InvertedResidual(2 * w, 2 * w, 1),
            InvertedResidual(2 * w, 4 * w, 2), InvertedResidual(4 * w, 4 * w, 1), InvertedResidual(4 * w, 4 * w, 1))
        self.head_conv = conv_bn(4 * w, 8 * w)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(self.stages(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))
