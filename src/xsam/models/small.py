"""A small, fast CNN for CPU tests and quick experiments.

Three conv-BN-ReLU stages (32, 64, 128 channels; 2x2 max-pooling after the first two), global
average pooling and one linear layer: 94,762 parameters for 10 classes. Not from a paper; it
follows the conv-BN-ReLU pattern of Ioffe & Szegedy, "Batch Normalization: Accelerating Deep
Network Training by Reducing Internal Covariate Shift", ICML 2015 (arXiv:1502.03167). BatchNorm
is deliberate: SAM-family optimizers must be tested on models whose forward pass updates
running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_dropout, check_positive_int, init_weights


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """conv32-BN-ReLU-pool, conv64-BN-ReLU-pool, conv128-BN-ReLU, avg pool, [dropout], linear.

    Args:
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
        dropout: dropout probability before the classifier, in [0, 1); 0 disables it.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        dropout = check_dropout("dropout", dropout)
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(32, 64),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_relu(64, 128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(128, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def small_cnn(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0) -> SmallCNN:
    """Build a :class:`SmallCNN`."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
