"""Shared helpers for the model zoo: argument validation and weight initialisation."""

from __future__ import annotations

from torch import nn


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` >= 1, else raise with the argument's name and value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} should be an int but is: {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} should be >= 1 but is: {value}")
    return value


def check_dropout(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a probability in [0, 1), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} should be a float but is: {value!r} ({type(value).__name__})")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} should be in [0, 1) but is: {value}")
    return float(value)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, BatchNorm weight 1 / bias 0.

    Linear layers keep PyTorch's default initialisation. Call as ``model.apply(init_weights)``.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
