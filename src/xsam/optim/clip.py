"""Clipping the direction an update applies.

The base optimizer of a SAM-family update steps once, with the update's direction ``d`` in
``.grad``: the full update's ``d``, or a cheap step's clean gradient plus the schedule's reuse
term (see :mod:`xsam.optim.schedule`). Clipping inside the closure clips a gradient the
update goes on to change (the reuse term is added after the closure), so it does not bound
the step. :func:`clip_direction_norm` clips ``d`` itself, just before the base optimizer
steps: after the reuse term, after a GradScaler's unscaling, and not at all on a skipped
update.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from ..checks import as_real, real

__all__ = ["DirectionNormClip", "clip_direction_norm"]


class DirectionNormClip:
    """A base-optimizer step pre-hook that clips the global ``norm_type``-norm of the gradients
    of the optimizer it is called for to ``max_norm`` (``torch.nn.utils.clip_grad_norm_``) and
    returns ``None``, as torch requires of a step pre-hook. ``last_norm``: the norm before
    clipping at the last call (a 0-d tensor; ``None`` before the first)."""

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        self.max_norm = real("max_norm", max_norm, low=0.0, strict=True)
        self.norm_type = _norm_type(norm_type)
        self.last_norm: Tensor | None = None

    def clip(self, base: Optimizer) -> Tensor:
        """Clip the gradients of ``base``'s parameters now; returns their norm before."""
        params = [p for g in base.param_groups for p in g["params"] if p.grad is not None]
        if any(p.grad.dtype == torch.float16 for p in params):
            self.last_norm = _clip_half(params, self.max_norm, self.norm_type)
        else:
            self.last_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        return self.last_norm

    def __call__(self, base: Optimizer, args: Any, kwargs: Any) -> None:
        self.clip(base)

    def __repr__(self) -> str:
        return f"DirectionNormClip(max_norm={self.max_norm:g}, norm_type={self.norm_type:g})"


def _clip_half(params: list[Tensor], max_norm: float, norm_type: float) -> Tensor:
    """``clip_grad_norm_``'s rule with the norm taken in float32: torch takes a float16
    gradient's norm in float16, where any norm above 65504 is inf and the clipped gradient
    becomes zero (a silent zero step)."""
    grads = [p.grad for p in params]
    wide = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norms = torch._foreach_norm(grads, norm_type, dtype=wide)
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]), norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, coef)  # products formed in float32, rounded once
    return total


def clip_direction_norm(
    optimizer: Optimizer, max_norm: float, norm_type: float = 2.0
) -> RemovableHandle:
    """Clip the global norm of the direction every update of ``optimizer`` applies.

    ``optimizer``: an :class:`xsam.SAM` / :class:`xsam.XSAM` (also inside a framework's
    wrapper that keeps it as ``.optimizer``), or any torch optimizer. Registers a
    :class:`DirectionNormClip` as a step pre-hook on its base optimizer, so that on every
    update, full or cheap (reuse term included), the base optimizer steps along ``d``
    clipped to ``max_norm``; under a GradScaler ``d`` is clipped unscaled; a skipped update
    clips nothing. Returns the hook's handle (``handle.remove()`` stops clipping); the hook
    itself is ``handle.clip`` (its ``last_norm`` is the norm of ``d`` before clipping)::

        opt = xsam.XSAM(model.parameters(), torch.optim.SGD, lr=0.05, schedule=...)
        xsam.clip_direction_norm(opt, max_norm=1.0)
    """
    base = _base_of(optimizer)
    hook = DirectionNormClip(max_norm, norm_type)
    handle = base.register_step_pre_hook(hook)
    handle.clip = hook  # type: ignore[attr-defined]
    return handle


def _base_of(optimizer: Any) -> Optimizer:
    """The optimizer that steps with ``d``: a SAM-family optimizer's base optimizer (through
    up to four ``.optimizer`` wrappers), or ``optimizer`` itself."""
    from ._core import SAMFamily

    opt = optimizer
    for _ in range(4):  # unwrap first: a LightningOptimizer is an instance of what it wraps
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, Optimizer):
            break
        opt = inner
    if isinstance(opt, SAMFamily):
        return opt.base_optimizer
    if isinstance(optimizer, Optimizer):
        return optimizer
    raise TypeError(
        f"clip_direction_norm: optimizer must be a torch.optim.Optimizer (e.g. xsam.XSAM), got "
        f"{type(optimizer).__name__}"
    )


def _norm_type(value: Any) -> float:
    value = as_real("norm_type", value)
    if not (value == math.inf or (math.isfinite(value) and value > 0)):
        raise ValueError(f"norm_type must be > 0 (or inf), got {value!r}")
    return value
