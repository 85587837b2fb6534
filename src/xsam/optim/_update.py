"""What one update carries from the clean pass to the descent (:class:`_Update`), the counters
kept across updates (:class:`Counters`) and the per-parameter buffers the updates reuse."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..distributed import local_tensor
from ._kernels import asam_scale


@dataclass
class _Update:
    """What one update carries from the clean pass to the descent."""

    owners: list[Tensor]  # the parameters (nn.Parameter or DTensor) the update covers
    params: list[Tensor]  # their local data (the shard under FSDP), where the math happens
    theta0: list[Tensor]
    dtype: torch.dtype
    ascents: int = 0
    # per-tensor ρ/k and ρ_max (None when every group has the same value: one scalar then)
    rho: float | list[float] = 0.0
    rho_max: float | list[float] = 0.0
    scale: list[Tensor] | None = None  # T = |θ₀| + η (adaptive geometry), else None
    finite: list[Tensor] = field(default_factory=list)  # one flag per norm taken
    grad_norms: list[Tensor] = field(default_factory=list)  # ‖gᵢ‖ (in the geometry used)
    losses: list[Tensor] = field(default_factory=list)
    # which owners had a gradient in the last pass read, and in any pass so far (DDP: a
    # parameter no rank used keeps .grad = None, as DDP leaves it)
    present: list[bool] = field(default_factory=list)
    ever: list[bool] = field(default_factory=list)
    # the clean gradient g₀ (θ coordinates), kept for the schedule's reuse (LookSAM); its
    # buffers become the reused unit vector when the update completes
    g0: list[Tensor] | None = None
    # set by _pass_flags when d is not g_k: ‖g_k‖² in float64 (precise_sq_sums); and by a
    # strategy's _descent when its own bound proves d finite (no norm of d needed then)
    gk_sq: Tensor | None = None
    d_finite: bool = False
    # set when d is g₀'s direction in exact arithmetic (ρ = 0; XSAM with α* = 0 and one
    # ascent step): its part orthogonal to g₀ is rounding noise, so no reuse vector is kept
    parallel: bool = False
    # set by XSAM's _descent: the coefficient of the displacement δ = θ_k − θ₀ in d (ASAM:
    # of T⁻¹δ in T·d). δ is recovered by a subtraction, so d carries its rounding, up to
    # |coefficient|·ε·|θ₀| per element (÷T² under ASAM): part of the reuse noise floor
    displacement_coef: float = 0.0

    def read_grads(self) -> list[Tensor]:
        """The local gradients of the owners after a pass (a missing one is set to zeros),
        noting which owners had one in this pass (``present``) and in any so far (``ever``)."""
        grads, present = [], []
        for p in self.owners:
            present.append(p.grad is not None)
            if p.grad is None:  # no gradient in this pass: it is zero
                p.grad = torch.zeros_like(p)
            grads.append(local_tensor(p.grad))
        self.present = present
        self.ever = present if not self.ever else [a or b for a, b in zip(self.ever, present)]
        return grads

    def set_geometry(self, groups: list[dict[str, Any]], steps: int) -> None:
        """ρ/k and ρ_max from each owner's group (one number when all agree), and ASAM's
        scale ``T = |θ₀| + η`` with ``adaptive``."""
        rhos = [g["rho"] / steps for g in groups]
        rho_maxes = [g["rho_max"] if g["rho_max"] is not None else 2.0 * g["rho"] for g in groups]
        self.rho = rhos[0] if len(set(rhos)) <= 1 and rhos else rhos
        self.rho_max = rho_maxes[0] if len(set(rho_maxes)) <= 1 and rho_maxes else rho_maxes
        if groups and groups[0]["adaptive"]:
            self.scale = asam_scale(self.theta0, [g["eta"] for g in groups])


@dataclass
class Counters:
    """How many updates an optimizer has made, under the names its state_dict keeps."""

    updates: int = 0  # applied updates, full and cheap
    skipped_updates: int = 0
    cheap_updates: int = 0  # applied cheap steps (see PerturbationSchedule)
    step_index: int = 0  # every update so far, full or cheap, applied or skipped

    def count(self, applied: bool, *, cheap: bool) -> None:
        """One more update: applied (full or cheap) or skipped."""
        self.step_index += 1
        if not applied:
            self.skipped_updates += 1
        else:
            self.updates += 1
            self.cheap_updates += int(cheap)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Counters:
        """From a state_dict's entry (states saved before step_index / cheap_updates existed
        count every update as a step and none as cheap)."""
        updates, skipped = int(saved["updates"]), int(saved["skipped_updates"])
        return cls(
            updates=updates,
            skipped_updates=skipped,
            cheap_updates=int(saved.get("cheap_updates", 0)),
            step_index=int(saved.get("step_index", updates + skipped)),
        )


def counter(name: str) -> property:
    """A read-write attribute of the optimizer backed by its :class:`Counters`."""

    def get(self: Any) -> int:
        return getattr(self._counters, name)

    def set_(self: Any, value: int) -> None:
        setattr(self._counters, name, value)

    return property(get, set_, doc=f"The ``{name}`` counter (see :class:`Counters`).")


def param_buffers(state: Any, owners: list[Tensor], params: list[Tensor], key: str) -> list[Tensor]:
    """One buffer per parameter under ``state[owner][key]``, like ``params``' local data (kept
    from the last update when its shape, dtype and device still match, made otherwise)."""
    bufs = []
    for o, p in zip(owners, params):
        st = state[o]
        buf = st.get(key)
        if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
            buf = st[key] = torch.empty_like(p, memory_format=torch.preserve_format)
        bufs.append(buf)
    return bufs


def _as_tensor(loss: Any) -> Tensor:
    """A pass's loss as a detached tensor (``None`` as zero)."""
    if isinstance(loss, Tensor):
        return loss.detach()
    if loss is None:
        return torch.zeros(())
    return torch.as_tensor(float(loss))


def _detached(loss: Any) -> Any:
    return loss.detach() if isinstance(loss, Tensor) else loss
