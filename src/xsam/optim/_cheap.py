"""A step of one pass: a cheap step of the perturbation schedule (the clean gradient, plus
LookSAM's reuse term when the schedule has one and a full update has left its vector), or
an update with ρ = 0 everywhere (exactly the base optimizer)."""

from __future__ import annotations

from typing import Any

import torch

from ..distributed import local_tensor
from ._scaler import base_step
from ._update import _as_tensor
from ._vec import acc_dtype, global_sq_sums


class CheapStep:
    """:meth:`_plain_step` of :class:`~xsam.optim._core.SAMFamily` (a mixin)."""

    def _plain_step(
        self, loss: Any, *, cheap: bool, scaler: torch.amp.GradScaler | None = None
    ) -> bool:
        """One pass's gradient, then the base step: ρ = 0 everywhere (exactly the base
        optimizer) or a cheap step of the schedule (the clean gradient, plus the reuse term
        when the schedule has one and a full update has left its vector). Skipped, changing
        nothing, when the loss or the gradient the base optimizer would receive (the reuse
        term included) is not finite."""
        owners = [p for p in self._group_params() if p.grad is not None]
        grads = [local_tensor(p.grad) for p in owners]
        ok = True
        if grads:
            sq = global_sq_sums([grads], acc_dtype(grads), self._reduce)[0]
            finite = torch.isfinite(sq) & torch.isfinite(_as_tensor(loss)).to(sq.device).all()
            if cheap and self._reuse_valid and self.schedule.reuse > 0.0:
                # check what the base optimizer will receive, reuse term included
                finite = finite & torch.isfinite(self._apply_reuse(owners, grads, sq))
            ok = bool(self._dist.agree_all(finite))
            if not ok and scaler is not None and scaler.is_enabled():
                for p in owners:  # the scaler must see the skip to lower its scale
                    p.grad = torch.full_like(p, float("nan"))
        if cheap:
            self._last = {"g0_norm": sq.sqrt() if grads else torch.zeros(())}
        elif self.schedule.reuse > 0.0:  # a full update with ρ = 0: d = g₀, nothing to reuse
            self._reuse_valid = self._drop_reuse()
        base_step(self.base_optimizer, ok, scaler)
        self._finish(ok, full=not cheap)
        return ok
