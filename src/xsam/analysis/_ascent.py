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
from dataclasses import dataclass

from torch import Tensor

from .vectors import EPS, FlatModel, LossFn, cosine

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
