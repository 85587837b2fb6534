"""A plain, per-tensor-loop XSAM: the comparator of the optimizer-only benchmark.

This is the vector math of one XSAM update (docs/algorithm.md §3) written the way most research
code writes it: a Python loop over the parameter tensors for every operation, norms taken per
tensor with ``.norm()`` and summed in Python, fresh temporaries for v₀, v₁ and d, a per-tensor
copy of θ₀ kept in ``self.state`` (as davda54/sam keeps ``old_p``), and the slerp of
§3.4 with a clamped arccos. No search (α is a fixed number) and no safety checks: it exists
only to be timed against ``xsam.XSAM`` and to check that both produce the same ``d``.

It mirrors ``xsam.XSAM``'s low-level API so one harness drives both::

    opt = PlainXSAM(params, torch.optim.SGD, rho=0.15, steps=1, alpha=0.5, lr=0.01)
    # .grad holds g₀
    opt.ascent_step()                # θ₀ → θ₁ (repeat `steps` times, refilling .grad)
    # .grad holds g_k
    opt.descent_direction()          # .grad ← d = ‖g_k‖·v(α), θ ← θ₀
    opt.base_optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer

EPS = 1e-12

__all__ = ["PlainXSAM"]


class PlainXSAM:
    """XSAM with a fixed α, one Python loop per tensor operation (benchmark comparator)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.15,
        steps: int = 1,
        alpha: float = 1.0,
        **base_kwargs: object,
    ) -> None:
        self.all_params = list(params)
        self.rho = rho
        self.steps = steps
        self.alpha = alpha
        self.base_optimizer = base_optimizer(self.all_params, **base_kwargs)
        self.state: dict[Tensor, dict[str, Tensor]] = {}
        self.params: list[Tensor] = []
        self.ascents = 0

    @torch.no_grad()
    def ascent_step(self) -> None:
        """θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε) with the gradient now in ``.grad``."""
        if self.ascents == 0:
            self.params = [p for p in self.all_params if p.grad is not None]
            for p in self.params:
                self.state[p] = {"old_p": p.data.clone()}  # θ₀
        grad_norm = torch.sqrt(sum(p.grad.norm() ** 2 for p in self.params))
        scale = (self.rho / self.steps) / (grad_norm + EPS)
        for p in self.params:
            e_w = p.grad * scale
            p.add_(e_w)
            p.grad = None
        self.ascents += 1

    @torch.no_grad()
    def descent_direction(self) -> None:
        """Put d = ‖g_k‖·v(α) in ``.grad`` and restore θ₀ (call after the last backward)."""
        params = self.params
        old = [self.state[p]["old_p"] for p in params]

        # v₀: the ascent displacement, normalised
        delta = [p - o for p, o in zip(params, old)]
        n0 = torch.sqrt(sum(x.norm() ** 2 for x in delta))
        v0 = [x / (n0 + EPS) for x in delta]

        # v₁: the gradient at the last ascent point, normalised
        n1 = torch.sqrt(sum(p.grad.norm() ** 2 for p in params))
        v1 = [p.grad / (n1 + EPS) for p in params]

        # ψ = arccos(clamp(⟨v₀, v₁⟩, −1, 1))
        cos = sum((a * b).sum() for a, b in zip(v0, v1))
        psi = torch.arccos(torch.clamp(cos, -1.0, 1.0))

        # v(α) = [sin((1−α)ψ)·v₀ + sin(αψ)·v₁] / sin ψ, or v₁ when v₀ ∥ v₁
        sin_psi = torch.sin(psi)
        if sin_psi.item() < 1e-8:
            a, b = 0.0, 1.0
        else:
            a = torch.sin((1.0 - self.alpha) * psi) / sin_psi
            b = torch.sin(self.alpha * psi) / sin_psi

        for p, o, x0, x1 in zip(params, old, v0, v1):
            d = n1 * (a * x0 + b * x1)
            p.grad.copy_(d)
            p.data.copy_(o)  # restore θ₀
        self.ascents = 0


def _selfcheck() -> None:
    """α = 1 gives d = g_k and θ₀ comes back exactly (a smoke test of this file alone)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    theta0 = [p.detach().clone() for p in params]
    opt = PlainXSAM(params, torch.optim.SGD, rho=0.1, alpha=1.0, lr=0.1)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.ascent_step()
    gk = [torch.randn_like(p) for p in params]
    for p, g in zip(params, gk):
        p.grad = g.clone()
    opt.descent_direction()
    for p, g, t in zip(params, gk, theta0):
        assert torch.equal(p.detach(), t)
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(params[0].grad.sum()))


if __name__ == "__main__":
    _selfcheck()
    print("plain_xsam self-check passed")
