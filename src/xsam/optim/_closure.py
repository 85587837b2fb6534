"""``step(closure)``: one whole update driven through the lower-level protocol of the core
(clean pass, ``steps`` ascent passes, the direction with α probes from the closure, the base
step), behind the closure guards (``_guards``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._scaler import base_step
from ._update import _as_tensor, _detached


class ClosureStep:
    """:meth:`step` of :class:`~xsam.optim._core.SAMFamily` (a mixin)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run one whole update. ``closure`` does forward + backward on the current batch and
        returns the loss; it is called ``steps + 1`` times (every gradient cleared before each
        call), plus forward-only probes when XSAM's α search is due. Returns the clean-pass
        loss, detached.

        Without a closure ``step()`` raises, except for the state-initialisation call that
        ``torch.distributed.checkpoint`` makes on a fresh optimizer (every learning rate 0 and
        every gradient zero): that steps the base optimizer if it has no state yet, which
        creates its state and leaves the weights unchanged."""
        if closure is None:
            if not self._is_state_init_call():
                raise self._refuse_no_closure()
            # DCP asks again whenever this wrapper's own state is empty (before the first
            # update): stepping an initialised base again would decay its momentum.
            if not self.base_optimizer.state:
                self.base_optimizer.step()
            return None
        if self._update is not None:
            raise RuntimeError("step() called in the middle of an ascent_step() sequence")
        held = self._check_entry_grads()
        self._check_groups()
        grad_closure = torch.enable_grad()(closure)
        try:
            self._clear_grads()
            full = self.perturb_due
            if self._rho_all_zero() or not full:
                self._save_stats()
                with self._dist.gradient_pass(synced=True):
                    loss = grad_closure()
                self._compare_entry_grads(held)
                self._plain_step(loss, cheap=not full)
                return _detached(loss)
            with self.clean_pass():
                loss = grad_closure()
            self._compare_entry_grads(held)
            u = self._update = self._begin(checked=True)
            u.losses.append(_as_tensor(loss))
            for _ in range(self.steps):
                self.ascent_step()
                with self.perturbed_pass():
                    u.losses.append(_as_tensor(grad_closure()))
            loss_fn = self._probe_fn(closure) if self._needs_loss_fn() else None
            ok = self._descent_direction(loss_fn)
            base_step(self.base_optimizer, ok, None)
            self._finish(ok)
            return _detached(loss)
        except BaseException:
            self.abort_update()  # an exception mid-update: θ₀ and the statistics back
            raise
