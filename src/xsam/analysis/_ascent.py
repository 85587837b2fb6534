"""Projected gradient ascent on a sphere or a ball around θ₀ (shared by the direction probe and
the worst-case sharpness).

One trial: from the displacement δ (‖δ‖ = R on the sphere, ≤ R in the ball) step a length
``t·R`` along the normalised ascent direction — on the sphere the tangential part of the
gradient; in the ball the gradient itself, or its tangential part on the boundary when the
gradient points outwards — and project back (sphere: renormalise to radius R; ball: shrink onto
it when outside). The trial is kept only if the loss increases; then ``t`` grows ×1.5 (at most
1), otherwise it halves. A start stops after ``iters`` trials, or converged when ``t`` falls
below ``tol`` (no step of length ``tol·R`` or more along the ascent direction increases the
loss: a local maximum to that resolution) or when the stationarity ‖projected gradient‖/‖g‖ is
at most ``tol``. The schedule is scale-free: no learning rate to tune to the size of the
gradients. Rejected trials cost a forward pass only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import _check
from .vectors import EPS, FlatModel, LossFn, cosine, unit

_GROW, _SHRINK, _MAX_STEP = 1.5, 0.5, 1.0


@dataclass
class AscentRun:
    delta: Tensor  # final displacement from θ₀
    loss: float  # L(θ₀ + δ)
    trials: int  # forward passes after the first
    accepted: int  # trials that increased the loss (each also cost a backward pass)
    step: float  # final step length, in units of R
    converged: bool  # the step fell below tol, or stationarity <= tol
    rel_loss_change: float  # (L_final − L_w)/|L_final|, L_w = `window` accepted steps earlier
    direction_change: float  # angle (radians) between δ_w and δ_final
    stationarity: float  # ‖projected gradient‖/‖gradient‖ at the final point (0 at a maximum)


def _project(delta: Tensor, radius: float, sphere: bool) -> Tensor:
    n = float(delta.norm())
    if sphere:
        return delta * (radius / (n + EPS))
    return delta if n <= radius else delta * (radius / n)


def _ascent_direction(delta: Tensor, g: Tensor, radius: float, sphere: bool) -> Tensor:
    n = float(delta.norm())
    on_boundary = sphere or n >= radius * (1.0 - 1e-9)
    if not on_boundary:
        return g
    u = delta / (n + EPS)
    radial = float(g @ u)
    if sphere or radial > 0.0:  # the outward part of g is blocked by the constraint
        return g - radial * u
    return g


def ascend(
    fm: FlatModel,
    loss_fn: LossFn,
    delta0: Tensor,
    *,
    radius: float,
    sphere: bool,
    iters: int,
    lr: float,
    tol: float,
    window: int = 5,
) -> AscentRun:
    """Projected gradient ascent from ``θ₀ + delta0`` (projected first); see the module doc."""
    delta = _project(delta0, radius, sphere)
    out = fm.loss_graph(loss_fn, fm.theta0 + delta)
    loss, g = float(out.detach()), fm.grad_of(out)
    history: deque[tuple[float, Tensor]] = deque([(loss, delta)], maxlen=window + 1)
    step, trials, accepted, stationary = float(lr), 0, 0, False
    while trials < iters and step >= tol:
        direction = _ascent_direction(delta, g, radius, sphere)
        dn = float(direction.norm())
        if dn <= EPS * (float(g.norm()) + EPS):
            stationary = True
            break
        candidate = _project(delta + (step * radius / dn) * direction, radius, sphere)
        trials += 1
        out = fm.loss_graph(loss_fn, fm.theta0 + candidate)
        new_loss = float(out.detach())
        if new_loss > loss:  # NaN never passes
            g = fm.grad_of(out)
            delta, loss = candidate, new_loss
            history.append((loss, delta))
            accepted += 1
            step = min(step * _GROW, _MAX_STEP)
        else:
            del out
            step *= _SHRINK
    old_loss, old_delta = history[0]
    proj = _ascent_direction(delta, g, radius, sphere)
    gn = float(g.norm())
    stationarity = float(proj.norm()) / (gn + EPS) if gn > 0 else 0.0
    return AscentRun(
        delta=delta,
        loss=loss,
        trials=trials,
        accepted=accepted,
        step=step,
        converged=stationary or step < tol or stationarity <= tol,
        rel_loss_change=(loss - old_loss) / (abs(loss) + EPS),
        direction_change=math.acos(cosine(old_delta, delta)) if accepted else 0.0,
        stationarity=stationarity,
    )


_DUPLICATE_COS = 1.0 - 1e-9  # starts closer than this to an earlier one are skipped


@dataclass
class SphereSearch:
    """The runs of a multi-start search and the best of them."""

    best: AscentRun
    best_name: str
    runs: list[tuple[str, AscentRun]]
    skipped: list[str]


def sphere_search(
    fm: FlatModel,
    loss_fn: LossFn,
    starts: Sequence[tuple[str, Tensor]],
    *,
    radius: float,
    iters: int,
    lr: float,
    tol: float,
    sphere: bool = True,
) -> SphereSearch:
    """Projected gradient ascent from each start (skipping zero and duplicate starts); the run
    with the highest final loss wins (ties: the earlier start)."""
    runs: list[tuple[str, AscentRun]] = []
    kept: list[Tensor] = []
    skipped: list[str] = []
    for name, vec in starts:
        if float(vec.norm()) == 0.0 or not bool(torch.isfinite(vec).all()):
            skipped.append(name)
            continue
        d = unit(vec)
        if any(float(d @ other) > _DUPLICATE_COS for other in kept):
            skipped.append(name)
            continue
        kept.append(d)
        run = ascend(
            fm, loss_fn, radius * d, radius=radius, sphere=sphere, iters=iters, lr=lr, tol=tol
        )
        runs.append((name, run))
    if not runs:
        raise RuntimeError("the sphere search had no usable start (all zero or non-finite)")
    best_i = max(range(len(runs)), key=lambda i: (loss_rank(runs[i][1].loss), -i))
    return SphereSearch(runs[best_i][1], runs[best_i][0], runs, skipped)


def loss_rank(x: float) -> float:
    """A loss for ranking: NaN below every number."""
    return -math.inf if math.isnan(x) else x


def search_report(search: SphereSearch, clean_loss: float) -> dict[str, Any]:
    """What a sphere search found, as plain values: the best loss and its increase over
    ``clean_loss``, its convergence, and every start's loss and agreement with the best."""
    best = search.best
    losses = [run.loss for _, run in search.runs]
    finite = [x for x in losses if math.isfinite(x)]
    spread = (max(finite) - min(finite)) if finite else math.nan
    return {
        "loss": best.loss,
        "increase": best.loss - clean_loss,
        "best_start": search.best_name,
        "converged": best.converged,
        "rel_loss_change": best.rel_loss_change,
        "direction_change": best.direction_change,
        "stationarity": best.stationarity,
        "final_step": best.step,
        "loss_spread": spread,
        "rel_loss_spread": spread / (abs(best.loss) + EPS),
        "trials": sum(run.trials for _, run in search.runs),
        "starts": [
            {
                "name": name,
                "loss": run.loss,
                "cos_to_best": cosine(run.delta, best.delta),
                "trials": run.trials,
                "accepted": run.accepted,
                "converged": run.converged,
            }
            for name, run in search.runs
        ],
        "skipped_starts": list(search.skipped),
    }


def ascent_args(iters: Any, lr: Any, tol: Any) -> tuple[int, float, float]:
    """The ascent's ``iters``, ``lr`` and ``tol`` arguments, checked."""
    return (
        _check.integer("ascent_iters", iters, low=0),
        _check.real("ascent_lr", lr, low=0.0, strict=True),
        _check.real("ascent_tol", tol, low=0.0, strict=True),
    )
