"""The loss over the v₀–v₁ plane around θ₀ (the paper's Figure 1)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import DEFAULT_ALPHA_GRID
from . import _check
from .directions import k_step_ascent, plane_basis
from .vectors import FlatModel, LossFn, unit

__all__ = ["plane_landscape", "grid_point"]


def plane_landscape(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    rho: float,
    rho_max: float | None = None,
    extent: float = 1.5,
    resolution: int = 41,
    steps: int = 1,
    alpha_grid: Sequence[float] | None = None,
    directions: dict[str, Tensor] | None = None,
    seed: int = 0,
    return_vectors: bool = False,
) -> dict[str, Any]:
    """``L(θ₀ + ρ_max·(a·e₁ + b·e₂))`` on a ``resolution × resolution`` grid of
    ``a, b ∈ [−extent, extent]``, with e₁ = v₀ (the ascent direction; g₀/‖g₀‖ for k = 1) and
    e₂ the unit part of v₁ = g_k/‖g_k‖ orthogonal to v₀ (Gram–Schmidt); if v₁ ∥ v₀, e₂ is a
    random direction orthogonal to v₀ and ``degenerate`` is true.

    The same sandbox as :func:`probe_directions` (train mode, statistics frozen, fixed random
    numbers, weights restored bit for bit).

    Args:
        model, loss_fn: the model and ``loss_fn(model) -> scalar loss`` on a fixed batch.
        rho: the ascent path length ρ (> 0).
        rho_max: the probe radius and the grid's unit (> 0); default 2ρ.
        extent: the grid spans ``[−extent, extent]`` in units of ρ_max (> 0).
        resolution: points per axis (>= 2).
        steps: k, the number of ascent steps that define v₀ and v₁ (>= 1).
        alpha_grid: XSAM's α grid for v(α*); default :data:`xsam.DEFAULT_ALPHA_GRID`.
        directions: extra named flat directions to place in the plane (e.g. u* from
            ``probe_directions(..., return_vectors=True)["vectors"]["u_star"]``).
        seed: seeds the random numbers of every loss evaluation (and e₂ if degenerate).
        return_vectors: also return the flat basis vectors ``{"e1": …, "e2": …}`` under
            ``"vectors"`` (tensors: the result is then no longer JSON-serialisable).

    Returns:
        ``coords`` (the grid values in units of ρ_max), ``losses`` with ``losses[i][j]`` the loss
        at ``a = coords[j]``, ``b = coords[i]`` (rows follow e₂, as ``contourf`` expects),
        ``clean_loss``, ``rho``, ``rho_max``, ``steps``, ``alpha_star``, ``psi``,
        ``candidates`` — for g0, g_k (named ``g1`` for k = 1), ``xsam`` (v(α*)) and each extra
        direction: ``[a, b]`` = (⟨unit(d), e₁⟩, ⟨unit(d), e₂⟩), the point ``θ₀ + ρ_max·unit(d)``
        projected onto the plane — ``ascent_point`` (θ_k's coordinates), ``degenerate``,
        ``time_s``.
    """
    loss_fn = _check.loss_function(loss_fn)
    rho, rho_max = _check.rho_pair(rho, rho_max)
    extent = _check.real("extent", extent, low=0.0, strict=True)
    resolution = _check.integer("resolution", resolution, low=2)
    k = _check.integer("steps", steps, low=1)
    grid = _check.alpha_grid(alpha_grid, DEFAULT_ALPHA_GRID)
    t0 = time.perf_counter()
    coords = [-extent + 2.0 * extent * i / (resolution - 1) for i in range(resolution)]
    with FlatModel(model, seed=seed) as fm:
        clean, g0 = fm.loss_and_grad(loss_fn, fm.theta0)
        ks = k_step_ascent(fm, loss_fn, g0, rho=rho, rho_max=rho_max, k=k, alpha_grid=grid)
        e1, e2, degenerate = plane_basis(fm, ks.v0, ks.v1, torch.Generator().manual_seed(seed))
        losses = [
            [fm.loss(loss_fn, fm.theta0 + (rho_max * a) * e1 + (rho_max * b) * e2) for a in coords]
            for b in coords
        ]
        named: dict[str, Tensor] = {"g0": g0, f"g{k}": ks.g_k, "xsam": ks.v_star}
        for name, vec in (directions or {}).items():
            named[name] = vec.detach().to(fm.device, fm.dtype)
        candidates = {name: [float(unit(v) @ e1), float(unit(v) @ e2)] for name, v in named.items()}
        ascent = ks.theta_k - fm.theta0
        ascent_point = [float(ascent @ e1) / rho_max, float(ascent @ e2) / rho_max]
    out: dict[str, Any] = {
        "coords": coords,
        "losses": losses,
        "clean_loss": clean,
        "rho": rho,
        "rho_max": rho_max,
        "extent": extent,
        "steps": k,
        "alpha_star": ks.alpha_star,
        "psi": ks.psi,
        "candidates": candidates,
        "ascent_point": ascent_point,
        "degenerate": degenerate,
        "time_s": time.perf_counter() - t0,
    }
    if return_vectors:
        out["vectors"] = {"e1": e1.detach(), "e2": e2.detach()}
    return out


def grid_point(result: dict[str, Any], i: int, j: int) -> tuple[float, float]:
    """The ``(a, b)`` coordinates (units of ρ_max) of ``result["losses"][i][j]``."""
    return result["coords"][j], result["coords"][i]
