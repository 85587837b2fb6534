"""CIFAR VGG-11 with BatchNorm.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (arXiv:1409.1556), configuration A (11 weight layers), with BatchNorm after every
convolution (Ioffe & Szegedy 2015) and the CIFAR adaptation of kuangliu/pytorch-cifar: the three
fully connected layers are replaced by a single ``Linear(512, num_classes)``. Convolutions keep
their bias, as in that layout: 9,231,114 parameters for 10 classes.

Departures that do not change 32x32 behaviour or the parameter count: max-pooling uses
``ceil_mode=True`` so that five halvings of a 28x28 input do not reach an empty map, and
adaptive average pooling precedes the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int, init_weights

VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """VGG with BatchNorm for small images.

    Args:
        cfg: layer list; an int is a 3x3 conv-BN-ReLU with that many channels, ``"M"`` a 2x2
            max-pool.
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
    """

    def __init__(
        self,
        cfg: tuple[int | str, ...] = VGG11_CFG,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            elif isinstance(item, int) and not isinstance(item, bool) and item >= 1:
                layers += [
                    nn.Conv2d(channels, item, kernel_size=3, padding=1),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
            else:
                raise ValueError(f"cfg entries should be ints >= 1 or 'M' but got: {item!r}")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """CIFAR VGG-11 with BatchNorm and a single linear classifier."""
    return VGG(VGG11_CFG, num_classes=num_classes, in_channels=in_channels)
