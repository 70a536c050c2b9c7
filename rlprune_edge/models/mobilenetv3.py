"""MobileNetV3 small/large (Howard et al. 2019) adapted to 32x32: the stem conv has stride 1.

Inverted residual blocks with squeeze-excitation (Hardsigmoid gate) and Hardswish, as in
torchvision; channel counts scaled by `width` and rounded to multiples of 8.
"""

from __future__ import annotations

import torch
from torch import nn

from rlprune_edge.models._common import make_divisible

# (kernel, expanded, out, use_se, activation, stride)
SMALL = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
LARGE = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]


def _act(kind: str) -> nn.Module:
    return nn.Hardswish(inplace=True) if kind == "HS" else nn.ReLU(inplace=True)


class SqueezeExcitation(nn.Module):
    """Channel gate: global pool → 1x1 reduce → ReLU → 1x1 expand → Hardsigmoid → scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    """Expand 1x1 → depthwise kxk → (SE) → project 1x1, residual when shapes allow."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act: str, stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers += [nn.Conv2d(cin, expanded, 1, bias=False), nn.BatchNorm2d(expanded), _act(act)]
        layers += [
            nn.Conv2d(expanded, expanded, kernel, stride=stride, padding=kernel // 2, groups=expanded, bias=False),
            nn.BatchNorm2d(expanded),
            _act(act),
        ]
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
        layers += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3 for 32x32 inputs."""

    def __init__(self, config: list[tuple], last_channel: int, width: float = 1.0, num_classes: int = 10,
                 dropout: float = 0.2) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width, 8)

        stem = ch(16)
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(stem),
                          nn.Hardswish(inplace=True))
        ]
        cin = stem
        for kernel, expanded, cout, use_se, act, stride in config:
            layers.append(InvertedResidual(cin, kernel, ch(expanded), ch(cout), use_se, act, stride))
            cin = ch(cout)
        last_conv = 6 * cin
        layers.append(nn.Sequential(nn.Conv2d(cin, last_conv, 1, bias=False), nn.BatchNorm2d(last_conv),
                                    nn.Hardswish(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = ch(last_channel)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, hidden), nn.Hardswish(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build_mobilenetv3(name: str, width: float, num_classes: int) -> MobileNetV3:
    """mobilenetv3_small / mobilenetv3_large at channel multiplier `width`."""
    if name == "mobilenetv3_small":
        return MobileNetV3(SMALL, 1024, width, num_classes)
    return MobileNetV3(LARGE, 1280, width, num_classes)
