"""What ``step(closure)`` guards against, and its warnings: gradients held on entry (hidden
accumulation is refused, a duplicate backward warned about), Accelerate's skipped micro-batch
steps, closures that run backward in the α probes, ``step()`` without a closure, and the
warning of a skipped update. Each warning is given once per optimizer."""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..distributed import local_tensor
from ._vec import acc_dtype, global_sq_sums

ENTRY_GRAD_RTOL = 1e-2
"""Gradients held on entry to step(closure) that differ from the clean pass's by more than
this (relative, in norm) were accumulated over other batches, not a duplicate backward."""

_NO_CLOSURE = (
    "{who}.step() needs a closure that runs forward and backward (SAM-family updates evaluate "
    "the gradient at several points); for loops a closure cannot express use ascent_step() / "
    "descent_step(); in a Hugging Face Trainer (which calls step() without one) use "
    "xsam.integrations.transformers.SAMTrainer"
)


class ClosureGuards:
    """The guards of :class:`~xsam.optim._core.SAMFamily` (a mixin). ``_left``: the gradients
    the last update left (weak reference and version by parameter id)."""

    _left: dict[int, tuple[Any, int]] = {}
    _warned_skip = False
    _warned_entry_grads = False
    _probe_with_grad = False
    _warned_probe_grad = False

    # ------------------------------------------------------------------ gradients on entry
    def _remember_grads(self) -> None:
        """Note the gradients this update leaves (d, or NaN after a skip), so that the next
        ``step()`` can tell them from gradients a backward outside the closure put there."""
        self._left = {
            id(p): (weakref.ref(p.grad), p.grad._version)
            for p in self._group_params()
            if p.grad is not None
        }

    def _ours(self, p: Tensor) -> bool:
        left = self._left.get(id(p))
        return left is not None and left[0]() is p.grad and left[1] == p.grad._version

    def _check_entry_grads(self) -> list[tuple[str, Tensor, Tensor]]:
        """``step(closure)`` computes every gradient itself and clears ``.grad`` first. Refuse
        a step that a framework's hidden accumulation would make wrong (Accelerate's), and
        return the non-zero gradients a backward outside the closure put there (as
        ``(name, parameter, gradient)``; references, not copies): :meth:`_compare_entry_grads`
        tells accumulation from a duplicate backward once the clean pass has run. Costs one
        dictionary look-up per parameter when every gradient is this optimizer's own."""
        self._refuse_accelerate_accumulation()
        foreign = [
            (i, p)
            for i, p in enumerate(self._group_params())
            if p.grad is not None and p.requires_grad and not self._ours(p)
        ]
        if not foreign:
            return []
        anys = [local_tensor(p.grad).ne(0).any() for _, p in foreign]
        flags = torch.stack([a.to(anys[0].device) for a in anys])  # one host sync
        held = [(i, p) for (i, p), nz in zip(foreign, flags.tolist()) if nz]
        if not held:
            return []  # zero_grad(set_to_none=False): nothing is lost
        names = self._param_names()
        return [(names.get(id(p), f"parameter {i}"), p, p.grad) for i, p in held]

    def _compare_entry_grads(self, held: list[tuple[str, Tensor, Tensor]]) -> None:
        """After the clean pass: gradients held on entry that differ from the clean pass's
        own were accumulated over other batches (a framework's ``accumulate_grad_batches``,
        micro-batches summed by hand), which ``step(closure)`` cannot use: raise. Equal ones
        (a duplicate backward on the same batch) only cost work: warn, once."""
        if not held:
            return
        entry = [local_tensor(g) for _, _, g in held]
        clean = [
            local_tensor(p.grad) if p.grad is not None else torch.zeros_like(e)
            for (_, p, _), e in zip(held, entry)
        ]
        dtype = acc_dtype(entry)
        diff = torch._foreach_sub([e.to(dtype) for e in entry], [c.to(dtype) for c in clean])
        d_sq, e_sq, c_sq = global_sq_sums([diff, entry, clean], dtype).tolist()
        name, who = held[0][0], type(self).__name__
        if d_sq > (ENTRY_GRAD_RTOL**2) * max(e_sq, c_sq):
            raise RuntimeError(
                f"{who}.step(closure): the gradients held when it was called (e.g. {name!r}) "
                "differ from the closure's own: they were accumulated by backward() outside "
                "the closure (a framework's accumulate_grad_batches, micro-batches summed by "
                "hand), and step(closure), which computes every gradient itself, would train "
                "on the last micro-batch only. With Lightning use "
                "xsam.integrations.lightning.SAMModule; by hand, accumulate with the "
                "lower-level API (clean_pass / ascent_step / perturbed_pass / descent_step); "
                "if those gradients are stale, call zero_grad() before step()"
            )
        if self._warned_entry_grads:
            return
        self._warned_entry_grads = True
        warnings.warn(
            f"{who}.step(closure) discarded the gradient {name!r} (and maybe others) held "
            "when it was called, equal to the clean pass's own (a backward outside the "
            "closure on the same batch): it computes every gradient itself, so that backward "
            "was wasted work; call zero_grad() before step() (warned once)",
            RuntimeWarning,
            stacklevel=4,
        )

    def _refuse_accelerate_accumulation(self) -> None:
        """Accelerate's ``AcceleratedOptimizer.step()`` does nothing on the micro-batches that
        do not sync under ``gradient_accumulation_steps > 1``: a closure step would never run
        those batches (and ``accelerator.backward`` divides every loss by the count)."""
        n = _accelerate_accumulation()
        if n > 1:
            raise RuntimeError(
                f"{type(self).__name__}.step(closure) called by Accelerate with "
                f"gradient_accumulation_steps={n}: Accelerate skips the optimizer step on the "
                "micro-batches that do not sync, so their closures never run and those "
                "batches are never trained on. Leave gradient_accumulation_steps at 1 and run "
                "each update over its micro-batches with "
                "xsam.integrations.accelerate.sam_update(accelerator, opt, batches, loss_fn)"
            )

    # ------------------------------------------------------------------ step() without closure
    def _is_state_init_call(self) -> bool:
        """The call ``torch.distributed.checkpoint`` makes on a fresh optimizer: every learning
        rate 0 and every gradient zero."""
        grads = [p.grad for p in self._group_params() if p.grad is not None]
        if not grads or self._update is not None:
            return False
        lrs_zero = all(float(g.get("lr", 1.0)) == 0.0 for g in self.param_groups)
        return lrs_zero and all(not bool(g.any()) for g in grads)

    def _refuse_no_closure(self) -> RuntimeError:
        return RuntimeError(_NO_CLOSURE.format(who=type(self).__name__))

    # ------------------------------------------------------------------ α probes
    def _probe_fn(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        """A forward-only loss from a forward+backward closure.

        Probes run the closure under ``torch.no_grad()``. A closure that calls ``backward()``
        unconditionally fails there; we then fall back, for this optimizer, to probing with
        gradients (the backward is wasted work and its gradients are discarded) and say how
        to avoid it: guard the backward with ``if torch.is_grad_enabled():``."""

        def probe() -> Any:
            if not self._probe_with_grad:
                try:
                    with torch.no_grad():
                        out = closure()
                    self._check_probe_grads()
                    return out
                except RuntimeError as err:
                    if "does not require grad" not in str(err):
                        raise
                    self._probe_with_grad = True
                    warnings.warn(
                        f"{type(self).__name__}: the closure calls backward() under "
                        "torch.no_grad(), so alpha probes run with gradients (about 3x their "
                        "cost). Write `if torch.is_grad_enabled(): loss.backward()` in the "
                        "closure to make them forward-only.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            with torch.enable_grad():
                return closure()

        return probe

    def _check_probe_grads(self) -> None:
        """A closure that turns gradients back on itself (``torch.enable_grad()`` inside, as
        some frameworks' closures do) runs a backward in every α probe: say so, once."""
        if self._warned_probe_grad or all(p.grad is None for p in self._group_params()):
            return
        self._warned_probe_grad = True
        warnings.warn(
            f"{type(self).__name__}: an alpha probe ran backward although it was called under "
            "torch.no_grad() (the closure enables gradients itself), so probes cost about 3x a "
            "forward pass. Make the closure forward-only when torch.is_grad_enabled() is False "
            "on entry, or use the lower-level API with a forward-only loss_fn.",
            RuntimeWarning,
            stacklevel=5,
        )

    # ------------------------------------------------------------------ skipped updates
    def _warn_skip(self) -> None:
        if self._warned_skip:
            return
        self._warned_skip = True
        warnings.warn(
            f"{type(self).__name__}: non-finite loss or gradient; update skipped and the "
            "weights left unchanged (counted in .skipped_updates; warned once)",
            RuntimeWarning,
            stacklevel=4,
        )


def _accelerate_accumulation(depth: int = 12) -> int:
    """``gradient_accumulation_steps`` of the Accelerate ``AcceleratedOptimizer`` whose
    ``step()`` is calling this optimizer's, or 1 (at once when accelerate is not imported)."""
    wrapper = getattr(sys.modules.get("accelerate.optimizer"), "AcceleratedOptimizer", None)
    if wrapper is None:
        return 1
    frame = sys._getframe(1)
    for _ in range(depth):  # its step, torch's step wrappers (and a GradScaler's), ours
        if frame is None:
            break
        if frame.f_code.co_name == "step":
            caller = frame.f_locals.get("self")
            if isinstance(caller, wrapper):
                return int(caller.gradient_state.num_steps)
        frame = frame.f_back
    return 1
