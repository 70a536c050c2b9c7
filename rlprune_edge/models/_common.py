"""Channel-count helpers shared by the zoo architectures."""

from __future__ import annotations

from torch import nn


def scale(channels: int, width: float) -> int:
    """`channels * width` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width)))


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet's rounding: nearest multiple of `divisor`, never more than 10% below `value`."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → ReLU with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )
