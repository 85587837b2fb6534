"""Wide residual networks (WRN-28-10).

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (arXiv:1605.07146). A 3x3 conv with
16 channels, three groups of n = (depth - 4) / 6 pre-activation basic blocks (BN-ReLU-conv3x3,
BN-ReLU-[dropout]-conv3x3) with widths 16k, 32k and 64k and strides 1, 2, 2, then BN-ReLU,
global average pooling and a linear layer. Convolutions have no bias; where a block changes the
shape, the shortcut is a 1x1 conv applied to the block's pre-activated input, as in the authors'
code. WRN-28-10: 36,479,194 parameters for 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_dropout, check_positive_int, init_weights


class _WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(
                in_channels, out_channels, kernel_size=1, stride=stride, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # The projection sees the pre-activated input; the identity path sees the raw input.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen for small images.

    Args:
        depth: total depth, 6n + 4 (16, 22, 28, 40, ...).
        widen: width multiplier k.
        dropout: dropout probability between the two convs of each block, in [0, 1).
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
    """

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        dropout: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive_int("depth", depth)
        check_positive_int("widen", widen)
        dropout = check_dropout("dropout", dropout)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth should be 6n + 4 (10, 16, 22, 28, ...) but is: {depth}")
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_WideBlock(channels, width, stride, dropout))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def wrn28_10(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> WideResNet:
    """WideResNet-28-10 (pre-activation blocks, dropout off by default)."""
    return WideResNet(28, 10, dropout, num_classes=num_classes, in_channels=in_channels)
