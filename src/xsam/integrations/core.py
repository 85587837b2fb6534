"""Framework-independent pieces of the integrations (torch only).

A framework integration runs the clean pass its own way (Lightning and the Hugging Face
Trainer run it themselves, micro-batch by micro-batch), then hands over to :func:`finish_update`
for the rest of the SAM-family update: ``steps`` ascent steps, each followed by a gradient pass
over *every* micro-batch of the step, and the descent (α probes forward-only, clipping applied
to ``d``, the base optimizer stepped once, through the GradScaler when one is enabled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..optim import SAMFamily
from ..optim.clip import DirectionNormClip

__all__ = ["clip_direction", "finish_update", "norm_clip", "require", "sam_optimizer"]

Clip = Callable[[torch.optim.Optimizer], Any]  # what it returns is discarded


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"xsam.integrations.{extra} needs the {module.split('.')[0]!r} package, which is not "
            f'installed: pip install "torch-xsam[{extra}]"'
        ) from err


def sam_optimizer(optimizer: Any, where: str) -> SAMFamily:
    """The SAM-family optimizer inside a framework's wrapper (``LightningOptimizer``,
    ``AcceleratedOptimizer``: both keep it as ``.optimizer``), or a TypeError naming ``where``."""
    opt = optimizer
    # unwrap first: a LightningOptimizer is also an instance of the class it wraps, with a copy
    # of its __dict__, so counters set on it would not reach the real optimizer
    for _ in range(4):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        opt = inner
    if isinstance(opt, SAMFamily):
        return opt
    raise TypeError(
        f"{where} needs a SAM-family optimizer (xsam.SAM or xsam.XSAM), got "
        f"{type(optimizer).__name__}"
    )


@contextlib.contextmanager
def clip_direction(opt: SAMFamily, clip: Clip | None) -> Iterator[None]:
    """Inside: ``clip(base_optimizer)`` runs just before the base optimizer steps, i.e. on the
    final direction ``d`` (unscaled when a GradScaler steps it), exactly as clipping acts on the
    gradient of a plain optimizer. Not run when the update is skipped. What ``clip`` returns
    (a norm, say) is discarded: torch refuses a step pre-hook that returns a value."""
    if clip is None:
        yield
        return

    def hook(base: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        clip(base)

    handle = opt.base_optimizer.register_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def norm_clip(max_norm: float | None) -> Clip | None:
    """The ``clip`` of :func:`finish_update` that clips the global 2-norm of ``d`` to
    ``max_norm``, as :func:`xsam.clip_direction_norm` does; ``None`` (no clipping) when
    ``max_norm`` is ``None`` or 0 (the frameworks' "off")."""
    if not max_norm:
        return None
    return DirectionNormClip(max_norm).clip


def enabled(scaler: torch.amp.GradScaler | None) -> torch.amp.GradScaler | None:
    """``scaler`` if it is an enabled GradScaler, else ``None``."""
    return scaler if scaler is not None and scaler.is_enabled() else None


def finish_update(
    opt: SAMFamily,
    gradient_pass: Callable[[], None],
    probe_loss: Callable[[], Tensor],
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip: Clip | None = None,
) -> bool:
    """The SAM-family update after its clean pass, on the lower-level API.

    On entry ``.grad`` holds the clean gradient of the whole step (all micro-batches, scaled by
    ``scaler`` if enabled). ``gradient_pass()`` runs forward and backward over every micro-batch
    at the current (perturbed) weights, accumulating into ``.grad`` the same way the clean pass
    did. ``probe_loss()`` returns the loss over the same micro-batches and is called under
    ``torch.no_grad()`` (XSAM's α probes; never for SAM). ``clip(base_optimizer)`` clips ``d``.
    When the optimizer's perturbation schedule makes this step a cheap one (``perturb_due``
    false), the base optimizer steps with the clean gradient alone (clipped likewise) and
    nothing else runs. Returns whether the update was applied. If anything raises, the update is abandoned (θ₀,
    statistics and gradients back) and the error re-raised."""

    def probe() -> Tensor:
        with torch.no_grad():
            return probe_loss()

    scaler = enabled(scaler)
    try:
        if not opt.perturb_due:  # a cheap step of the optimizer's schedule: the clean gradient
            with clip_direction(opt, clip):
                return opt.descent_step(scaler=scaler)
        for _ in range(opt.steps):
            opt.ascent_step()
            with opt.perturbed_pass():
                gradient_pass()
        with clip_direction(opt, clip):
            return opt.descent_step(loss_fn=probe, scaler=scaler)
    except BaseException:
        opt.abort_update()
        raise
