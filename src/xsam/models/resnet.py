"""CIFAR-style residual networks.

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
(arXiv:1512.03385).

* :func:`resnet20` is the paper's own CIFAR-10 network (Section 4.2): a 3x3 conv with 16
  channels, then 3 stages of n = 3 basic blocks with 16, 32 and 64 channels (the first block of
  stages 2 and 3 has stride 2), global average pooling and a linear layer; 6n + 2 = 20 layers.
  Shortcuts use **option A** as in the paper's CIFAR experiments: identity, and where the shape
  changes, stride-2 subsampling with zero-padded extra channels, so shortcuts carry no
  parameters. 269,722 parameters for 10 classes (the paper: 0.27M).
* :func:`resnet18` and :func:`resnet50` are the ImageNet ResNet-18/50 (Table 1 of the paper)
  adapted to 32x32 inputs in the widely used way (kuangliu/pytorch-cifar layout): a 3x3 stride-1
  stem conv with 64 channels and no max-pool, four stages of basic (ResNet-18, [2, 2, 2, 2]) or
  bottleneck (ResNet-50, [3, 4, 6, 3]) blocks with stride 1, 2, 2, 2, option-B projection
  shortcuts (1x1 conv + BN) where the shape changes, and the stride on the bottleneck's 3x3 conv.
  11,173,962 and 23,520,842 parameters for 10 classes.

All use adaptive average pooling before the classifier, so inputs need not be 32x32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_positive_int, init_weights


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the channel dimension."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Split the extra channels evenly on both sides, as in the original Torch code.
        before = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra - before))


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (post-activation)."""

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, *, shortcut: str = "B"
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = _conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, each followed by BN."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = _projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The paper's 6n+2-layer CIFAR ResNet (widths 16-32-64, option-A shortcuts).

    Args:
        depth: total depth, 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        check_positive_int("depth", depth)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth should be 6n + 2 (20, 32, 44, 56, 110, ...) but is: {depth}")
        n = (depth - 2) // 6
        self.conv1 = _conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, shortcut="A"))
                channels = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x)).flatten(1)
        return self.fc(x)


class ResNet(nn.Module):
    """ImageNet-family ResNet with a CIFAR stem (3x3 stride-1 conv, no max-pool).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage, four entries.
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks should have 4 entries but is: {num_blocks}")
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        channels = 64
        stages: list[nn.Module] = []
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            check_positive_int(f"num_blocks[{stage}]", count)
            blocks: list[nn.Module] = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(channels, planes, stride))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.pool(x).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016, Section 4.2), option-A shortcuts."""
    return CifarResNet(depth=20, num_classes=num_classes, in_channels=in_channels)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet-18 (basic blocks [2, 2, 2, 2], 3x3 stem)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet-50 (bottleneck blocks [3, 4, 6, 3], 3x3 stem)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)
