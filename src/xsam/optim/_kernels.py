"""The SAM family's vector math as free functions over tensor lists (``torch._foreach_*``),
testable without an optimizer, like torch's ``_multi_tensor_*`` kernels.

Each function works on the local data of the parameters one update covers, treats the lists
as one flat vector (norms and dot products global, through ``reduce`` when the vector is
sharded), changes the lists it names with a trailing underscore in place, and never
synchronises with the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._vec import ReduceFn, add_scaled_, global_dots, global_norm, global_sq_sums

EPS = 1e-12
"""ε of every normalisation ``g/(‖g‖+ε)``: a zero gradient gives a zero step, not NaN."""

REUSE_NOISE = 16.0
"""The part of d orthogonal to g₀ is rounding noise below this many ε·‖d‖ (see
:func:`orthogonal_unit_`)."""


def asam_scale(theta0: list[Tensor], etas: list[float]) -> list[Tensor]:
    """ASAM's ``T = |θ₀| + η`` (one η, or one per tensor), fixed at θ₀ for all k steps (the
    ellipsoid is centred there)."""
    scale = torch._foreach_abs(theta0)
    if len(set(etas)) == 1:
        torch._foreach_add_(scale, etas[0])
    else:
        torch._foreach_add_(scale, etas)
    return scale


def ascent_(
    params: list[Tensor],
    grads: list[Tensor],
    rho: float | list[float],
    scale: list[Tensor] | None,
    dtype: torch.dtype,
    reduce: ReduceFn | None = None,
) -> Tensor:
    """One ascent step ``θ += (ρ/k)·g/(‖g‖+ε)`` (``rho`` is ρ/k, one number or one per tensor);
    with ASAM's ``scale`` T, ``θ += (ρ/k)·T²g/(‖T g‖+ε)``. ``grads`` is scratch space. Returns
    the norm taken, ``‖g‖`` or ``‖T g‖``, accumulated in ``dtype``."""
    if scale is not None:
        torch._foreach_mul_(grads, scale)  # g̃ = T·g
    norm = global_norm(grads, dtype, reduce)
    inv = (norm + EPS).reciprocal()
    if isinstance(rho, float) and scale is None:
        add_scaled_(params, grads, inv * rho)  # one pass
        return norm
    if isinstance(rho, float):
        inv = inv * rho
    torch._foreach_mul_(grads, inv)
    if not isinstance(rho, float):
        torch._foreach_mul_(grads, rho)
    if scale is not None:
        torch._foreach_mul_(grads, scale)  # back to θ coordinates: δθ = T·δθ̃
    torch._foreach_add_(params, grads)
    return norm


def orthogonal_unit_(
    g0: list[Tensor],
    d: list[Tensor],
    dtype: torch.dtype,
    reduce: ReduceFn | None = None,
    average: Callable[[list[Tensor]], object] | None = None,
    carried: Tensor | float = 0.0,
) -> None:
    """``g0 ← v``: the unit vector of ``d − (⟨d, g₀⟩/‖g₀‖²)·g₀``, the part of ``d`` orthogonal
    to ``g₀`` (LookSAM's reused vector); ``average`` (DDP with local perturbation) averages
    that part over ranks before it is normalised. Zero when its norm is below
    ``REUSE_NOISE``·ε·(‖d‖ + ``carried``) (ε of the widest-rounding dtype of ``g0``):
    rounding noise. ``carried``: a bound on the rounding ``d`` brings from how it was formed,
    in units of ε (XSAM: that of the displacement θ_k − θ₀), beyond its own ε·‖d‖."""
    sums, d_sq = global_sq_sums([g0, d], dtype, reduce)
    dot = global_dots(d, g0, dtype, reduce)
    coef = torch.where(sums > 0, dot / sums.clamp_min(torch.finfo(dtype).tiny), 0.0)
    torch._foreach_mul_(g0, -coef)
    torch._foreach_add_(g0, d)  # d − (⟨d,g₀⟩/‖g₀‖²)·g₀
    if average is not None:
        average(g0)
    norm = global_norm(g0, dtype, reduce)
    noise = REUSE_NOISE * max(torch.finfo(t.dtype).eps for t in g0) * (d_sq.sqrt() + carried)
    torch._foreach_mul_(g0, torch.where(norm > noise, (norm + EPS).reciprocal(), 0.0))


def add_reuse_(grads: list[Tensor], vectors: list[Tensor], lam: float, sq: Tensor) -> None:
    """A cheap step's gradient ``g + λ·‖g‖·v`` into ``grads``, ``‖g‖ = √sq``: formed in
    ``sq``'s dtype (float32 or wider: λ‖g‖ and the sum may exceed half precision's range where
    the result does not) and rounded once into ``grads``."""
    wide = [g.to(sq.dtype) for g in grads]  # g itself when it is of that dtype already
    coef = sq.sqrt() * lam
    torch._foreach_add_(wide, torch._foreach_mul([v.to(sq.dtype) for v in vectors], coef))
    narrow = [(g, w) for g, w in zip(grads, wide) if w is not g]
    if narrow:
        torch._foreach_copy_(*(list(t) for t in zip(*narrow)))
