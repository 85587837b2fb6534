"""Accelerate: :func:`sam_update`, one SAM-family update over the micro-batches of an optimizer
step, with an ``Accelerator``'s mixed precision, GradScaler and DDP.

Why a helper: a closure step inside ``accelerator.accumulate(model)`` would be wrong. With
``gradient_accumulation_steps=n``, ``AcceleratedOptimizer.step()`` skips the steps that do not
sync, so their closure is never called and those batches are never forwarded (``step()`` called
by that wrapper with ``n > 1`` therefore raises); and it returns ``None``, so the clean loss
is lost. Instead, gather the ``n`` micro-batches of a step yourself
and hand them to :func:`sam_update`, with the Accelerator's ``gradient_accumulation_steps`` left
at 1::

    model, opt, loader = accelerator.prepare(model, opt, loader)   # opt: xsam.XSAM(...)
    for batches in chunks(loader, n):                                # n micro-batches a step
        loss = sam_update(accelerator, opt, batches, lambda b: F.cross_entropy(model(b[0]), b[1]),
                          model=model, max_grad_norm=1.0)

Every pass (clean, each ascent point, each XSAM α probe) forwards every micro-batch; the probes
run under ``torch.no_grad()``; fp16 losses are scaled by ``accelerator.scaler``, which steps the
base optimizer; ``max_grad_norm`` clips ``d``, the final direction. Under DDP (``model=`` the
prepared model, required with several processes) the optimizer is attached to it
(:meth:`xsam.SAMFamily.attach`) with ``perturbation``: ``"local"`` (the default; each process
ascends from its own micro-batches, the clean and ascent passes are not all-reduced, the ranks'
directions ``d`` are averaged in one all-reduce) or ``"global"`` (every pass all-reduced, once,
on its last micro-batch: one process on the global batch). XSAM's probe losses are averaged
over the processes, so every replica takes the same α and step. FSDP2 (``fully_shard`` through
the Accelerator) works with ``"global"`` only; FSDP1 is refused. See docs/multi-gpu.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..distributed import attach_wrapped, check_perturbation
from .core import finish_update, norm_clip, require, sam_optimizer

accelerate = require("accelerate", "accelerate")

__all__ = ["sam_update"]


def _check(accelerator: Any) -> None:
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError(
            f"sam_update: Accelerator(gradient_accumulation_steps="
            f"{accelerator.gradient_accumulation_steps}) would skip the optimizer steps that do not "
            "sync and rescale the losses; leave it at 1 and pass the micro-batches of one step "
            "to sam_update as a list"
        )
    if not accelerator.sync_gradients:
        raise RuntimeError(
            "sam_update called inside accelerator.accumulate() on a step that does not sync: "
            "call it outside accumulate(), once per optimizer step, with all its micro-batches"
        )


def _attach(accelerator: Any, opt: Any, model: Any, perturbation: str | None) -> None:
    """Several processes: the optimizer learns the prepared (wrapped) model."""
    check_perturbation(perturbation, "sam_update")
    if accelerator.num_processes == 1:
        return
    if model is None:
        raise ValueError(
            f"sam_update: {accelerator.num_processes} processes need model= the prepared model, "
            "so that the optimizer synchronises the passes as the perturbation mode requires"
        )
    attach_wrapped(opt, model, perturbation, "sam_update")


def sam_update(
    accelerator: Any,
    optimizer: Any,
    batches: Sequence[Any],
    loss_fn: Callable[[Any], Tensor],
    *,
    model: torch.nn.Module | None = None,
    max_grad_norm: float | None = None,
    perturbation: str | None = None,
) -> Tensor:
    """One whole SAM-family update over ``batches``, the micro-batches of one optimizer step.

    ``optimizer``: the prepared ``xsam.SAM`` / ``xsam.XSAM`` (or the optimizer itself);
    ``loss_fn(batch)``: forward through the prepared model and the loss, nothing else (it is
    called once per micro-batch and pass, under ``torch.no_grad()`` for α probes); each loss is
    divided by ``len(batches)``. ``model``: the prepared model, to skip the gradient all-reduce
    of all but the last micro-batch of a pass under DDP; required with several processes, where
    the optimizer is attached to it. ``perturbation``: ``"local"`` or ``"global"`` with several
    processes (``None``: the optimizer's own, ``"local"`` by default; ignored in one process).
    ``max_grad_norm``: clip the global norm of ``d``. Returns the clean loss (the mean over the
    micro-batches, at the weights before the update), detached; ``optimizer.skipped_updates``
    counts updates skipped for non-finite values."""
    opt = sam_optimizer(optimizer, "sam_update")
    _check(accelerator)
    if not batches:
        raise ValueError("sam_update: batches is empty (one optimizer step needs one micro-batch)")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"sam_update: max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    _attach(accelerator, opt, model, perturbation)
    n = len(batches)
    clean: list[Tensor] = []

    def gradient_pass(record: list[Tensor] | None = None) -> None:
        for i, batch in enumerate(batches):
            last = i == n - 1
            sync = contextlib.nullcontext() if last or model is None else accelerator.no_sync(model)
            with sync:
                loss = loss_fn(batch) / n
                accelerator.backward(loss)
            if record is not None:
                record.append(loss.detach())

    def probe_loss() -> Tensor:
        total: Tensor | float = 0.0
        for batch in batches:
            total = total + loss_fn(batch) / n
        # several processes: the attached optimizer averages the probe losses over them
        return torch.as_tensor(total)

    opt.zero_grad(set_to_none=True)
    try:
        with opt.clean_pass():
            gradient_pass(clean)
    except BaseException:
        opt.abort_update()
        raise
    scaler = accelerator.scaler
    clip = norm_clip(max_grad_norm)  # the public xsam.clip_direction_norm's
    finish_update(opt, gradient_pass, probe_loss, scaler=scaler, clip=clip)
    if scaler is not None and scaler.is_enabled():
        scaler.update()
    return torch.stack(clean).sum()
