"""What the framework DDP tests share: a tiny float64 model, each rank's micro-batches, the
optimizers, and a hand-driven single-process reference of the two perturbation modes.

The reference (``reference``) computes every update literally, with the plain implementation
of tests/reference.py (never ``xsam.optim``):

* ``"global"``: one process on the concatenated global batch (every rank's micro-batches of
  the step), the loss their mean;
* ``"local"``: each rank's own update direction ``d_r`` from its own micro-batches (SAM:
  ``g_k,r``; XSAM: ``‖g_k,r‖·v_r(α*)``), with α* the arg-max of the rank-averaged probe
  losses, and ``d`` the mean of the ``d_r``;

then ``d`` (clipped when asked, as ``torch.nn.utils.clip_grad_norm_`` clips) steps a plain
``torch.optim.SGD``. ``scale`` multiplies every loss, as a framework's own loss scaling does.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference import reference_update  # noqa: E402

import xsam  # noqa: E402

DT = torch.float64
WORLD = 2
ROWS = 4  # rows per micro-batch per rank
STEPS = 3  # optimizer updates per run
LR, MOMENTUM, RHO = 0.1, 0.9, 0.2
GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
ALPHA_EVERY = 2
RUNS = [
    (kind, mode, accum)
    for kind in ("sam", "xsam")
    for mode in ("local", "global")
    for accum in (1, 2)
]


def net(dtype: torch.dtype = DT) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def micro_batches(rank: int, accum: int, steps: int = STEPS, dtype: torch.dtype = DT):
    """Rank ``rank``'s micro-batches in training order (``accum`` per update). Rank 1's
    inputs come from another distribution, so that the ranks' local problems differ."""
    n = steps * WORLD * accum * ROWS
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 5, generator=g, dtype=DT)
    y = torch.randint(0, 3, (n,), generator=g)
    out = []
    for s in range(steps):
        for m in range(accum):
            start = ((s * WORLD + rank) * accum + m) * ROWS
            xb = x[start : start + ROWS].clone()
            if rank == 1:
                xb = 2.5 * xb + 1.0
            out.append((xb.to(dtype), y[start : start + ROWS].clone()))
    return out


def make_opt(kind: str, params, model=None, schedule=None) -> xsam.SAMFamily:
    kw = dict(rho=RHO, lr=LR, momentum=MOMENTUM, model=model)
    if kind == "sam":
        return xsam.SAM(params, torch.optim.SGD, schedule=schedule, **kw)
    return xsam.XSAM(params, torch.optim.SGD, alpha="auto", alpha_grid=GRID,
                     alpha_every=ALPHA_EVERY, schedule=schedule, **kw)  # fmt: skip


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _windows(step: int, accum: int, mode: str):
    per_rank = [micro_batches(r, accum)[step * accum : (step + 1) * accum] for r in range(WORLD)]
    return [sum(per_rank, [])] if mode == "global" else per_rank


def _loss(model, window, scale):
    return scale * sum(F.cross_entropy(model(x), y) for x, y in window) / len(window)


def _direction(model, params, windows, kind, alpha, scale):
    """The mean over (pseudo-)ranks of the update direction at fixed α."""
    theta0 = [p.detach().clone() for p in params]
    ds = []
    for win in windows:
        out = reference_update([params], lambda win=win: _loss(model, win, scale), lambda: None,
                               rho=RHO, alpha=alpha)  # fmt: skip
        ds.append(torch.cat([d.reshape(-1) for d in out["d"]]))
        with torch.no_grad():
            for p, t in zip(params, theta0):
                p.copy_(t)
    return torch.stack(ds).mean(0)


def _search(model, params, windows, scale):
    theta0 = [p.detach().clone() for p in params]
    probes = []
    for win in windows:
        out = reference_update([params], lambda win=win: _loss(model, win, scale), lambda: None,
                               rho=RHO, alpha=None, alpha_grid=GRID)  # fmt: skip
        probes.append(torch.tensor(out["probe_losses"], dtype=DT))
        with torch.no_grad():
            for p, t in zip(params, theta0):
                p.copy_(t)
    return GRID[int(torch.argmax(torch.stack(probes).mean(0)))]


def _clean_gradient(model, params, windows, scale):
    gs = []
    for win in windows:
        grads = torch.autograd.grad(_loss(model, win, scale), params)
        gs.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(gs).mean(0)


def reference(kind: str, mode: str, accum: int, *, scale: float = 1.0, clip: float | None = None,
              schedule=None, steps: int = STEPS) -> torch.Tensor:  # fmt: skip
    """The weights after ``steps`` updates of the chosen mode, driven by hand (see above)."""
    model = net()
    params = list(model.parameters())
    base = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    alpha = 1.0
    for s in range(steps):
        windows = _windows(s, accum, mode)
        if schedule is not None and not schedule.full(s):
            d = _clean_gradient(model, params, windows, scale)
        else:
            if kind == "xsam" and s % ALPHA_EVERY == 0:
                alpha = _search(model, params, windows, scale)
            d = _direction(model, params, windows, kind, alpha if kind == "xsam" else 1.0, scale)
        if clip is not None:
            d = d * min(1.0, clip / (float(d.norm()) + 1e-6))
        offset = 0
        for p in params:
            p.grad = d[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        base.step()
    return flat(model)


def plain_reference(accum: int, steps: int = 1) -> torch.Tensor:
    """Plain SGD (no momentum, lr LR) on the global mean loss: the calibration of a framework's
    loss scaling (its plain run's step divided by this one's)."""
    model = net()
    params = list(model.parameters())
    for s in range(steps):
        (window,) = _windows(s, accum, "global")
        grads = torch.autograd.grad(_loss(model, window, 1.0), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(LR * g)
    return flat(model)


def save_result(out_dir: str, name: str, rank: int, model: nn.Module, **extra) -> None:
    """This rank's weights (and any extra numbers) for the test to compare."""
    torch.save({"flat": flat(model), **extra}, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
