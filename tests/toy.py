"""The optimizer tests' shared toy: a small float64 classifier, its data and its closure, and a
snapshot of everything a skipped or abandoned update must leave untouched."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import xsam

DT = torch.float64


def net(seed: int = 0, bn: bool = False, dtype=DT, dropout: float = 0.0) -> nn.Sequential:
    """Linear 5→7, optional BatchNorm, tanh, optional dropout, linear 7→3; initialised from
    ``seed`` (BatchNorm and dropout hold no random initial values: the linear layers are the
    same with or without them)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(5, 7)]
    if bn:
        layers.append(nn.BatchNorm1d(7))
    layers += [nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(7, 3))
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


def snapshot(model, opt) -> dict:
    """Everything a skipped update must leave untouched, cloned: the weights, the buffers and
    the base optimizer's state."""
    base = opt.base_optimizer if isinstance(opt, xsam.SAMFamily) else opt
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "state": copy.deepcopy(base.state_dict()["state"]),
    }


def assert_same(a: dict, b: dict) -> None:
    """Two snapshots are equal bit for bit."""
    for x, y in zip(a["params"] + a["buffers"], b["params"] + b["buffers"], strict=True):
        assert torch.equal(x, y)
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, v in a["state"][k].items():
            w = b["state"][k][name]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w


def lower_level_step(model, opt, x, y, scaler=None):
    """The documented lower-level loop on cross-entropy: ask ``perturb_due`` before the clean
    pass, one ascent per inner step, and a descent with a no-grad probe; returns whether the
    update was applied (``scaler.update()`` is the caller's)."""
    scale = scaler.scale if scaler is not None else (lambda t: t)
    full = opt.perturb_due
    opt.zero_grad()
    with opt.clean_pass():
        scale(F.cross_entropy(model(x), y)).backward()
    if full:
        for _ in range(opt.steps):
            opt.ascent_step()
            with opt.perturbed_pass():
                scale(F.cross_entropy(model(x), y)).backward()

    def probe():
        with torch.no_grad():
            return F.cross_entropy(model(x), y)

    return opt.descent_step(loss_fn=probe, scaler=scaler)


def same(a, b) -> bool:
    """Exact equality of nested state_dict structures: tensors bit for bit with equal dtypes,
    through dicts, lists and tuples (a NaN is unequal to itself)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
