"""CIFAR DenseNet-121.

Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993). DenseNet-BC-121 (blocks of 6, 12, 24 and 16 bottleneck layers, growth rate
32, compression 0.5) with the CIFAR stem of kuangliu/pytorch-cifar: one 3x3 stride-1 conv with
2 x growth channels and no max-pool. Transitions are BN-ReLU-1x1 conv-2x2 average pool; the
head is BN-ReLU, global average pooling and a linear layer. 6,956,298 parameters for 10 classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_positive_int, init_weights


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4k) then BN-ReLU-3x3 conv (k); output concatenated to the input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat((x, out), dim=1)


class _Transition(nn.Module):
    """BN-ReLU-1x1 conv-2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """DenseNet-BC for small images.

    Args:
        block_sizes: number of dense layers in each dense block.
        growth: growth rate k (channels added per dense layer).
        reduction: channel compression factor of each transition, in (0, 1].
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
    """

    def __init__(
        self,
        block_sizes: tuple[int, ...] = (6, 12, 24, 16),
        growth: int = 32,
        reduction: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive_int("growth", growth)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if not 0.0 < reduction <= 1.0:
            raise ValueError(f"reduction should be in (0, 1] but is: {reduction}")
        if len(block_sizes) < 1:
            raise ValueError(f"block_sizes should be non-empty but is: {block_sizes}")
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, size in enumerate(block_sizes):
            check_positive_int(f"block_sizes[{i}]", size)
            for _ in range(size):
                stages.append(_DenseLayer(channels, growth))
                channels += growth
            if i < len(block_sizes) - 1:
                out_channels = math.floor(channels * reduction)
                stages.append(_Transition(channels, out_channels))
                channels = out_channels
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.features(self.conv1(x))))
        return self.classifier(self.pool(x).flatten(1))


def densenet121(num_classes: int = 10, in_channels: int = 3) -> DenseNet:
    """CIFAR DenseNet-121 (growth 32, blocks [6, 12, 24, 16], reduction 0.5)."""
    return DenseNet((6, 12, 24, 16), 32, 0.5, num_classes=num_classes, in_channels=in_channels)
