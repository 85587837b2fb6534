"""Sharpness metrics: the top Hessian eigenvalue and the worst-case loss increase in a ρ-ball.

Both run in the analysis sandbox (:class:`~xsam.analysis.vectors.FlatModel`): train mode with
normalisation statistics frozen, the same random numbers at every evaluation, weights and
running statistics untouched afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import _check
from ._ascent import ascent_args, search_report, sphere_search
from .vectors import EPS, FlatModel, LossFn

__all__ = ["hessian_top_eigenvalue", "worst_case_sharpness"]


@dataclass
class _Power:
    estimate: float  # Rayleigh quotient of the shifted operator H − σI
    v: Tensor
    hv: Tensor  # (H − σI)v
    iterations: int
    converged: bool
    rel_change: float


def _power_iteration(
    hvp: Callable[[Tensor], Tensor], v: Tensor, *, shift: float, iters: int, tol: float
) -> _Power:
    def op(x: Tensor) -> Tensor:
        return hvp(x) - shift * x if shift else hvp(x)

    hv = op(v)
    estimate = float(v @ hv)
    rel_change, converged, done = math.inf, False, 1
    while done < iters:
        norm = float(hv.norm())
        if norm == 0.0:  # v is in the null space: its eigenvalue is exactly 0
            converged = True
            break
        v = hv / norm
        hv = op(v)
        done += 1
        new = float(v @ hv)
        rel_change = abs(new - estimate) / (abs(new) + EPS)
        estimate = new
        if rel_change <= tol:
            converged = True
            break
    return _Power(estimate, v, hv, done, converged, rel_change)


def hessian_top_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    return_vector: bool = False,
) -> dict[str, Any]:
    """The top (most positive) eigenvalue λ_max of the Hessian of ``loss_fn`` at the current
    weights, by power iteration on Hessian-vector products (double backward through one
    retained graph).

    Power iteration converges to the eigenvalue of largest magnitude. When that one is negative
    (a strongly concave direction dominates), a second power iteration on ``H − λ_dom·I``
    (whose dominant eigenvalue is λ_max − λ_dom ≥ 0) recovers λ_max. Estimates are Rayleigh
    quotients of the current unit vector.

    Args:
        model, loss_fn: the model and ``loss_fn(model) -> scalar loss`` on a fixed batch.
        iters: the most Hessian-vector products per power iteration (>= 1).
        tol: stop once the estimate changes by at most ``tol`` relative between iterations.
        seed: seeds the random start vector and the random numbers of the forward pass.
        return_vector: also return the final unit vector (a flat tensor) as ``eigenvector``.

    Returns:
        ``eigenvalue`` (λ_max), ``dominant_eigenvalue`` (the largest in magnitude; equal to
        λ_max unless negative), ``iterations`` (Hessian-vector products in all),
        ``converged`` (the relative change fell to ``tol``), ``residual`` = ‖Hv − λv‖/|λ| at
        the returned v (how far v is from an eigenvector), ``rel_change`` (the last relative
        change).
    """
    loss_fn = _check.loss_function(loss_fn)
    iters = _check.integer("iters", iters, low=1)
    tol = _check.real("tol", tol, low=0.0)
    with FlatModel(model, seed=seed) as fm:
        loss = fm.loss_graph(loss_fn)
        grads = torch.autograd.grad(loss, fm.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        sizes = [p.numel() for p in fm.params]

        def hvp(v: Tensor) -> Tensor:
            chunks = v.split(sizes)
            terms = [
                (grads[i] * chunks[i].view_as(grads[i]).to(grads[i].dtype)).sum() for i in live
            ]
            if not terms:  # the gradient does not depend on the weights: H = 0
                return torch.zeros_like(v)
            hv = torch.autograd.grad(
                torch.stack(terms).sum(), fm.params, retain_graph=True, allow_unused=True
            )
            return fm.flatten(hv)

        start = fm.random_unit(torch.Generator().manual_seed(seed))
        run = _power_iteration(hvp, start, shift=0.0, iters=iters, tol=tol)
        dominant, total, shift = run.estimate, run.iterations, 0.0
        if dominant < 0.0:
            shift = dominant
            run = _power_iteration(hvp, start, shift=shift, iters=iters, tol=tol)
            total += run.iterations
        eigenvalue = run.estimate + shift
        hv = run.hv + shift * run.v  # H v
        residual = float((hv - eigenvalue * run.v).norm()) / (abs(eigenvalue) + EPS)
    out: dict[str, Any] = {
        "eigenvalue": eigenvalue,
        "dominant_eigenvalue": dominant,
        "iterations": total,
        "converged": run.converged,
        "residual": residual,
        "rel_change": run.rel_change,
    }
    if return_vector:
        out["eigenvector"] = run.v.detach()
    return out


def worst_case_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    rho: float,
    iters: int = 30,
    n_starts: int = 2,
    lr: float = 0.5,
    tol: float = 1e-6,
    seed: int = 0,
    return_vector: bool = False,
) -> dict[str, Any]:
    """``max_{‖δ‖≤ρ} L(θ+δ) − L(θ)`` by projected gradient ascent on the ball, from SAM's point
    ρ·g/‖g‖ and ``n_starts`` random points on the sphere, keeping the best.

    Each step moves ``t·ρ`` along the normalised gradient (on the boundary with an outward
    gradient: along its tangential part) and projects onto the ball; ``t`` starts at ``lr``,
    grows ×1.5 after a step that raised the loss (at most 1) and halves after one that did not.
    The result is a lower bound on the true maximum (a local maximum from the best start).

    Args:
        model, loss_fn: the model and ``loss_fn(model) -> scalar loss`` on a fixed batch.
        rho: the ball's radius (> 0).
        iters: trials per start (each a forward pass; successful ones also a backward).
        n_starts: random starts besides SAM's point (>= 0).
        lr: the first step length, in units of ρ.
        tol: a start stops once its step length is below this.
        seed: seeds the random starts and the random numbers of every loss evaluation.
        return_vector: also return the maximising displacement δ (a flat tensor) as ``delta``.

    Returns:
        ``loss`` L(θ), ``max_loss`` L(θ+δ*), ``increase`` (their difference), ``direction_norm``
        ‖δ*‖ (ρ when the maximum is on the boundary), and the search report (``converged``,
        ``rel_loss_change``, ``direction_change``, ``stationarity``, ``loss_spread``,
        ``starts``, ...).
    """
    loss_fn = _check.loss_function(loss_fn)
    rho = _check.real("rho", rho, low=0.0, strict=True)
    n_starts = _check.integer("n_starts", n_starts, low=0)
    iters, lr, tol = ascent_args(iters, lr, tol)
    with FlatModel(model, seed=seed) as fm:
        generator = torch.Generator().manual_seed(seed)
        clean, g0 = fm.loss_and_grad(loss_fn, fm.theta0)
        starts = [("sam", g0)] + [
            (f"random{i}", fm.random_unit(generator)) for i in range(n_starts)
        ]
        if float(g0.norm()) == 0.0 and n_starts == 0:
            starts.append(("random0", fm.random_unit(generator)))
        search = sphere_search(
            fm, loss_fn, starts, radius=rho, iters=iters, lr=lr, tol=tol, sphere=False
        )
    report = search_report(search, clean)
    out: dict[str, Any] = {
        "loss": clean,
        "max_loss": report.pop("loss"),
        "increase": report.pop("increase"),
        "direction_norm": float(search.best.delta.norm()),
        "rho": rho,
    }
    out.update(report)
    if return_vector:
        out["delta"] = search.best.delta.detach()
    return out
