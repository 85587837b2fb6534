"""A small float64 classifier, its data and its closure: shared by the optimizer test files."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DT = torch.float64


def net(seed: int = 0, bn: bool = False, dtype=DT) -> nn.Sequential:
    """Linear 5→7, optional BatchNorm, tanh, linear 7→3; initialised from ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 7)]
    if bn:
        layers.append(nn.BatchNorm1d(7))
    layers += [nn.Tanh(), nn.Linear(7, 3)]
    return nn.Sequential(*layers).to(dtype)


def data(seed: int = 1, n: int = 16, dtype=DT):
    """``n`` inputs of 5 features and labels in {0, 1, 2}, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def closure_for(model, x, y):
    """A closure that returns the cross-entropy and runs backward when gradients are on."""

    def closure():
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure
