"""Image-classification models for CIFAR-sized inputs, built by name.

Every convolutional model ends in adaptive average pooling, so it also runs on other input
sizes (28x28 grayscale with ``in_channels=1``, for instance); ``mlp`` and ``plain_cnn`` (the
label-noise benchmark's models, without normalisation) and ``vit`` (a small vision
transformer) are built for one input size (``image_size``). Convolutions are Kaiming-normal initialised
(fan_out, ReLU), BatchNorm layers start at weight 1 and bias 0; construction is deterministic
under :func:`torch.manual_seed`.

Example:
    >>> import torch
    >>> from xsam.models import build_model
    >>> model = build_model("resnet20", num_classes=10)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ._common import check_positive_int
from .densenet import DenseNet, densenet121
from .mlp import MLP, mlp
from .plain_cnn import PlainCNN, plain_cnn
from .resnet import CifarResNet, ResNet, resnet18, resnet20, resnet50
from .small import SmallCNN, small_cnn
from .vgg import VGG, vgg11_bn
from .vit import ViT, vit
from .wide_resnet import WideResNet, wrn28_10

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "mlp": mlp,
    "plain_cnn": plain_cnn,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg11_bn": vgg11_bn,
    "densenet121": densenet121,
    "wrn28_10": wrn28_10,
    "vit": vit,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
"""Names accepted by :func:`build_model`."""

FIXED_INPUT: frozenset[str] = frozenset({"mlp", "plain_cnn", "vit"})
"""Models whose input size is fixed at construction (``image_size`` of :func:`build_model`):
``mlp`` and ``plain_cnn`` (no normalisation layers) and ``vit`` (its number of patches)."""


def build_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a freshly initialised model by name.

    Args:
        name: one of :data:`MODEL_NAMES` (case-insensitive).
        num_classes: number of output logits (>= 1).
        in_channels: number of input image channels (>= 1).
        image_size: the input's height = width. Only the models with a fixed input size
            (:data:`FIXED_INPUT`: ``mlp``, ``plain_cnn``, ``vit``) use it (default 28 there); the convolutional
            models run on any size and ignore it.
        **kwargs: extra keyword arguments for the model's builder, e.g. ``dropout`` for
            ``small_cnn`` and ``wrn28_10``, ``width`` / ``depth`` for ``mlp``. An argument
            the builder does not take raises ``TypeError``.

    Returns:
        The model, in training mode, on the CPU in float32.

    Raises:
        ValueError: unknown ``name``, or ``num_classes`` / ``in_channels`` below 1.
        TypeError: ``name`` not a string, or ``num_classes`` / ``in_channels`` not an int.
    """
    if not isinstance(name, str):
        raise TypeError(f"name should be a str but is: {name!r} ({type(name).__name__})")
    builder = _BUILDERS.get(name.lower())
    if builder is None:
        raise ValueError(f"unknown model name {name!r}; accepted names: {', '.join(MODEL_NAMES)}")
    check_positive_int("num_classes", num_classes)
    check_positive_int("in_channels", in_channels)
    if name.lower() in FIXED_INPUT and image_size is not None:
        kwargs["image_size"] = check_positive_int("image_size", image_size)
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = [
    "FIXED_INPUT",
    "MODEL_NAMES",
    "VGG",
    "ViT",
    "CifarResNet",
    "DenseNet",
    "MLP",
    "PlainCNN",
    "ResNet",
    "SmallCNN",
    "WideResNet",
    "build_model",
    "densenet121",
    "resnet18",
    "resnet20",
    "resnet50",
    "mlp",
    "plain_cnn",
    "small_cnn",
    "vgg11_bn",
    "vit",
    "wrn28_10",
]
