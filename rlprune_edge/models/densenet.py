"""CIFAR DenseNet-121 (Huang et al. 2017): blocks of 6/12/24/16 bottleneck layers, growth 32*width."""

from __future__ import annotations

import torch
from torch import nn

from rlprune_edge.models._common import scale


class Bottleneck(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k), output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1 (compression) then 2x2 average pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """DenseNet for 32x32 inputs with a 3x3 stem of 2*growth channels."""

    def __init__(self, nblocks: tuple[int, ...] = (6, 12, 24, 16), width: float = 1.0, num_classes: int = 10,
                 reduction: float = 0.5) -> None:
        super().__init__()
        growth = scale(32, width)
        cin = 2 * growth
        self.conv1 = nn.Conv2d(3, cin, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(nblocks):
            layers = []
            for _ in range(n):
                layers.append(Bottleneck(cin, growth))
                cin += growth
            stages.append(nn.Sequential(*layers))
            if i < len(nblocks) - 1:
                cout = max(1, int(cin * reduction))
                stages.append(Transition(cin, cout))
                cin = cout
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.features(self.conv1(x))))
        return self.linear(torch.flatten(self.pool(x), 1))


def build_densenet(name: str, width: float, num_classes: int) -> DenseNet:
    """DenseNet-121 (CIFAR) at growth rate 32*width."""
    return DenseNet((6, 12, 24, 16), width, num_classes)
