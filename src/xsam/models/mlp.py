"""A multilayer perceptron: the simplest model that memorises noisy labels on a CPU budget.

``depth`` hidden layers of ``width`` units with ReLU, no normalisation and no dropout, so that
nothing but the optimizer stands between it and memorisation. The default (784-1024-1024-10 on
28×28 grey images, 1.87M parameters) fits Fashion-MNIST with 40% symmetric label noise to
100% training accuracy within 30 epochs, while its test accuracy falls after an early peak
(Arpit et al., "A Closer Look at Memorization in Deep Networks", ICML 2017, study the same
kind of network). Linear layers keep PyTorch's default initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int


class MLP(nn.Module):
    """Flatten, ``depth`` × (linear ``width``, ReLU), linear to ``num_classes``.

    Args:
        num_classes: number of output logits (>= 1).
        in_channels: image channels (>= 1).
        image_size: image height = width (>= 1); the input has ``in_channels · image_size²``
            features.
        width: hidden units per layer (>= 1).
        depth: number of hidden layers (>= 1).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: int = 1024,
        depth: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("width", width),
            ("depth", depth),
        ):
            check_positive_int(name, value)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU(inplace=True)]
            fan_in = width
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    width: int = 1024,
    depth: int = 2,
) -> MLP:
    """Build an :class:`MLP`."""
    return MLP(num_classes, in_channels, image_size, width, depth)
