"""Stepping the base optimizer with ``d``, under a GradScaler or not: an applied update is
unscaled first (so that step pre-hooks, the clipping of ``d``, see ``d`` itself), a skipped
one never reaches the base optimizer while an enabled scaler still records the skip."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.optim import Optimizer


def base_step(opt: Optimizer, ok: bool, scaler: torch.amp.GradScaler | None) -> None:
    """Step ``opt`` when ``ok``; with an enabled ``scaler`` through ``scaler.step`` either way
    (on a skip with ``opt.step`` disabled, so that the scaler only records it)."""
    if scaler is not None and scaler.is_enabled():
        if ok:
            _unscale(scaler, opt)
            scaler.step(opt)
        else:
            with _step_disabled(opt):
                scaler.step(opt)
    elif ok:
        opt.step()


def _unscale(scaler: torch.amp.GradScaler, opt: Optimizer) -> None:
    """Unscale ``opt``'s gradients now, unless that was done since the scaler's last update.

    ``GradScaler.step`` does not unscale an optimizer that takes the scale into its own kernel
    (``_step_supports_amp_scaling``: ``fused=True`` SGD, Adam, AdamW, Adagrad): its step
    pre-hooks (the clipping of ``d``) would see ``scale·d``. Unscaled first, every optimizer
    and every hook sees ``d`` itself; ``scaler.step`` then passes no scale to a fused kernel
    and still skips on the inf check recorded here."""
    states = getattr(scaler, "_per_optimizer_states", None)
    stage = states[id(opt)].get("stage") if states is not None else None
    if stage is None or getattr(stage, "name", "READY") == "READY":
        scaler.unscale_(opt)


@contextlib.contextmanager
def _step_disabled(opt: Optimizer) -> Iterator[None]:
    """``opt.step`` does nothing inside: lets a GradScaler record a skipped update (and lower
    its scale) without any chance of the base optimizer applying it."""
    had = "step" in opt.__dict__
    old = opt.__dict__.get("step")
    opt.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had:
            opt.step = old  # type: ignore[method-assign]
        else:
            del opt.step
