"""One update per optimizer kind: ``update(x, y) -> UpdateResult``.

:func:`make_update` picks the kind from the run state:

* :class:`PlainUpdate` — the base optimizer alone (``optimizer="sgd"``): one forward and
  backward, then a step unless the loss or the gradient is non-finite.
* :class:`SAMClosureUpdate` — SAM / XSAM in full precision: ``opt.step(closure)``, which runs
  the clean pass, the ascent passes and (XSAM) the α probes.
* :class:`SAMAmpUpdate` — SAM / XSAM under autocast (bf16, or fp16 with a GradScaler): the
  lower-level API (``clean_pass``, ``ascent_step``, ``perturbed_pass``, ``descent_step``), so
  that every pass runs under autocast and the scaled losses are backpropagated.

Each returns the clean-pass loss and logits (the epoch's training loss and accuracy), the
optimizer statistics of the update, and whether it was skipped. A new kind of update (e.g. a
schedule of cheap steps between full SAM updates) is a subclass of :class:`Update` chosen in
:func:`make_update`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..norm_stats import NormStatsSnapshot
from .state import RunState

__all__ = [
    "STAT_KEYS",
    "PlainUpdate",
    "SAMAmpUpdate",
    "SAMClosureUpdate",
    "Update",
    "UpdateResult",
    "make_autocast",
    "make_update",
]

STAT_KEYS = ("psi", "g0_norm", "gk_norm")
"""The per-update optimizer statistics the metrics average over an epoch."""

Autocast = Callable[[], Any]


def make_autocast(amp: str, device: torch.device) -> Autocast:
    """A factory of the context every forward pass runs in: ``torch.autocast`` with the dtype
    ``amp`` names (``"bf16"``, ``"fp16"``), or a null context for ``"off"``."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class UpdateResult:
    """What one update reports.

    ``loss`` and ``logits`` are the clean pass's (at the weights before the update, detached);
    ``stats`` holds the statistics of :data:`STAT_KEYS` the update measured (gradient norms in
    the loss's units, i.e. divided by the GradScaler's scale); ``skipped``: the update was not
    applied (non-finite loss or gradient); ``alpha_searched``: XSAM searched α in it."""

    loss: torch.Tensor
    logits: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    alpha_searched: bool = False


class Update:
    """One training update on a batch; subclasses implement :meth:`__call__`."""

    def __init__(self, state: RunState, criterion: nn.Module, autocast: Autocast) -> None:
        self.state = state
        self.net, self.opt, self.scaler = state.net, state.opt, state.scaler
        self.criterion = criterion
        self.autocast = autocast

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> UpdateResult:
        raise NotImplementedError

    def _loss_scale(self) -> float:
        return self.scaler.get_scale() if self.scaler.is_enabled() else 1.0


class PlainUpdate(Update):
    """The base optimizer alone: one pass, then a step unless the loss or the gradient is
    non-finite. A skipped update changes nothing: the running statistics its pass wrote are
    put back (and so are they when the pass raises); with fp16 the GradScaler still lowers
    its scale."""

    def __init__(self, state: RunState, criterion: nn.Module, autocast: Autocast) -> None:
        super().__init__(state, criterion, autocast)
        self._stats = NormStatsSnapshot(state.model)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> UpdateResult:
        opt, scaler = self.opt, self.scaler
        opt.zero_grad(set_to_none=True)
        self._stats.save()
        try:
            with self.autocast():
                out = self.net(x)
                loss = self.criterion(out, y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # fp16: the gradient in the loss's units, inf/NaN recorded
            grads = [p.grad for p in self.state.model.parameters() if p.grad is not None]
            norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
            ok = math.isfinite(norm) and math.isfinite(float(loss.detach()))
            if ok:
                scaler.step(opt)
            scaler.update()  # fp16: a non-finite gradient lowers the scale
        except BaseException:
            self._stats.restore()
            opt.zero_grad(set_to_none=True)
            raise
        if not ok:
            self._stats.restore()
        return UpdateResult(loss.detach(), out.detach(), {"g0_norm": norm}, skipped=not ok)


class _SAMUpdate(Update):
    """What the two SAM-family updates share: reading the optimizer's statistics."""

    def __init__(self, state: RunState, criterion: nn.Module, autocast: Autocast) -> None:
        super().__init__(state, criterion, autocast)
        self._probes = getattr(self.opt, "last_probe_losses", None)

    def _result(
        self, loss: torch.Tensor, logits: torch.Tensor, scale: float, skipped_before: int
    ) -> UpdateResult:
        last = self.opt.last_stats  # type: ignore[attr-defined]
        stats = {k: last[k] / (1.0 if k == "psi" else scale) for k in STAT_KEYS if k in last}
        searched = False
        if self.state.xsam:
            probes = self.opt.last_probe_losses  # type: ignore[attr-defined]
            searched, self._probes = probes is not self._probes, probes
        skipped = self.opt.skipped_updates != skipped_before  # type: ignore[attr-defined]
        return UpdateResult(loss, logits, stats, skipped=skipped, alpha_searched=searched)


class SAMClosureUpdate(_SAMUpdate):
    """SAM / XSAM in full precision: one ``opt.step(closure)``."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> UpdateResult:
        scale, skipped_before = self._loss_scale(), self.opt.skipped_updates  # type: ignore[attr-defined]
        clean: list[torch.Tensor] = []  # the first pass's logits: the clean pass

        def closure() -> torch.Tensor:
            out = self.net(x)
            loss = self.criterion(out, y)
            if torch.is_grad_enabled():  # XSAM's α probes run it forward only
                loss.backward()
            if not clean:
                clean.append(out.detach())
            return loss

        loss = self.opt.step(closure).detach()
        return self._result(loss, clean[0], scale, skipped_before)


class SAMAmpUpdate(_SAMUpdate):
    """SAM / XSAM under autocast, through the lower-level API (every pass under autocast, the
    losses scaled by the GradScaler when it is enabled)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> UpdateResult:
        opt, scaler = self.opt, self.scaler
        scale, skipped_before = self._loss_scale(), opt.skipped_updates  # type: ignore[attr-defined]

        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            with self.autocast():
                out = self.net(x)
                return self.criterion(out, y), out

        def probe() -> torch.Tensor:
            with torch.no_grad():
                return forward()[0]

        opt.zero_grad(set_to_none=True)
        # a cheap step of the perturbation schedule: the clean pass alone (asked before it,
        # because under DDP it decides whether the clean pass's gradient is all-reduced)
        full = opt.perturb_due  # type: ignore[attr-defined]
        try:
            # clean_pass() records the running statistics (the optimizer has model=), so a
            # skipped or abandoned update puts them back.
            with opt.clean_pass():  # type: ignore[attr-defined]
                loss, out = forward()
                scaler.scale(loss).backward()
            for _ in range(opt.steps if full else 0):  # type: ignore[attr-defined]
                opt.ascent_step()  # type: ignore[attr-defined]
                with opt.perturbed_pass():  # type: ignore[attr-defined]
                    scaler.scale(forward()[0]).backward()
            # Only an enabled (fp16) scaler: a disabled one's step() is the base step itself,
            # which would apply the NaN gradient a skipped update leaves in .grad.
            opt.descent_step(  # type: ignore[attr-defined]
                loss_fn=probe, scaler=scaler if scaler.is_enabled() else None
            )
        except BaseException:
            # a pass raised (out of memory, a bad batch, Ctrl-C): θ₀ and the statistics back,
            # no gradient left, the optimizer state untouched
            opt.abort_update()  # type: ignore[attr-defined]
            raise
        scaler.update()
        return self._result(loss.detach(), out.detach(), scale, skipped_before)


def make_update(state: RunState, autocast: Autocast) -> Update:
    """The update ``state``'s optimizer and ``config.amp`` call for, with the run's loss
    (cross-entropy with ``config.label_smoothing``)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=state.config.label_smoothing)
    if not state.sam_family:
        return PlainUpdate(state, criterion, autocast)
    if state.config.amp != "off":
        return SAMAmpUpdate(state, criterion, autocast)
    return SAMClosureUpdate(state, criterion, autocast)
