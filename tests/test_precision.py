"""Numerical precision of the update.

XSAM's angle ψ from sums of squares (xsam.py, ``_Angle``) keeps the precision of the direct
form 2·atan2(‖v₀−v₁‖, ‖v₀+v₁‖) near 0 and near π, on tensors large enough for the blocked
float64 sums (``_vec.precise_sq_sums``) to matter.

Reference: the same angle in float64 from the very vectors the optimizer sees (θ₁ − θ₀ and
g₁ cast to float64 exactly), by the direct form with ε as in docs/algorithm.md §3 step 3.
Measured: the relative error of min(ψ, π − ψ), the quantity that is small near either end.

float16 parameters with a vanishing gradient: the update's scalars (ρ/‖g‖, 1/‖g_k‖) then lie
beyond float16's range although every product they form does not. Before the fix torch refused
the ascent's ``alpha`` (an exception in the middle of ``step()``) and rounded XSAM's 1/‖g_k‖ to
inf (0·inf = NaN probes: every update skipped).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xsam
from xsam.optim._vec import add_scaled_, scale_

EPS = 1e-12
SHAPES = [(64, 3, 3, 3), (40_000,), (7,), (300, 70)]  # two tensors take the row path
ANGLES = [1e-6, 1e-4, 1e-2, 0.3, 1.0, math.pi / 2, 2.0, 2.5, math.pi - 1e-2, math.pi - 1e-5]


def _pieces(flat: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    out, i = [], 0
    for s in SHAPES:
        n = math.prod(s)
        out.append(flat[i : i + n].reshape(s).to(dtype))
        i += n
    return out


def _update(psi: float, dtype: torch.dtype, seed: int = 0) -> tuple[float, float]:
    """(library ψ, float64 reference ψ) for g₀ ⟂-decomposed so that ∠(g₀, g₁) = psi."""
    n = sum(math.prod(s) for s in SHAPES)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    a /= a.norm()
    b -= (b @ a) * a
    b /= b.norm()
    g0 = _pieces(3.0 * a, dtype)
    g1 = _pieces(5.0 * (math.cos(psi) * a + math.sin(psi) * b), dtype)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in SHAPES]
    opt = xsam.XSAM(params, torch.optim.SGD, rho=0.5, alpha=0.5, lr=0.1)
    for p, g in zip(params, g0):
        p.grad = g.clone()
    opt.ascent_step()
    delta = torch.cat([p.detach().reshape(-1).double() for p in params])  # θ₁ − θ₀ (θ₀ = 0)
    for p, g in zip(params, g1):
        p.grad = g.clone()
    assert opt.descent_direction()
    gk = torch.cat([g.reshape(-1).double() for g in g1])
    v0, v1 = delta / (delta.norm() + EPS), gk / (gk.norm() + EPS)
    ref = 2.0 * math.atan2(float((v0 - v1).norm()), float((v0 + v1).norm()))
    return opt.last_stats["psi"], ref


def _rel_err(got: float, ref: float) -> float:
    small = min(ref, math.pi - ref)
    return abs(got - ref) / small


@pytest.mark.parametrize("psi", ANGLES)
def test_float64_angle_is_precise_near_0_and_pi(psi):
    got, ref = _update(psi, torch.float64)
    # well below the 1e-12 the closed-form tests ask for, at every angle
    assert _rel_err(got, ref) < 1e-12, (got, ref)


@pytest.mark.parametrize("psi", ANGLES)
def test_float32_angle_is_precise_near_0_and_pi(psi):
    got, ref = _update(psi, torch.float32)
    # the reference sees the float32 vectors exactly, so this is the error of the sums alone;
    # the direct form in float32 is not better (its unit vectors are rounded to float32)
    bound = 2e-6 if 1e-3 < psi < math.pi - 1e-3 else 3e-2 * 1e-6 / min(psi, math.pi - psi)
    assert _rel_err(got, ref) < max(bound, 2e-6), (got, ref)


def test_degenerate_vectors_give_pi_over_2_or_the_guard():
    params = [torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))]
    opt = xsam.XSAM(params, torch.optim.SGD, rho=0.0, alpha=0.5, lr=0.1)
    opt.param_groups[0]["rho"] = 0.1
    params[0].grad = torch.zeros(5, dtype=torch.float64)
    opt.ascent_step()
    params[0].grad = torch.zeros(5, dtype=torch.float64)
    assert opt.descent_direction()
    assert opt.last_stats["psi"] == pytest.approx(math.pi / 2)
    assert torch.equal(params[0].grad, torch.zeros(5, dtype=torch.float64))


# ------------------------------------------------------ float16 with a vanishing gradient
VARIANTS = {
    "sam": ("SAM", {}),
    "xsam-fixed": ("XSAM", dict(alpha=0.5)),
    "xsam-searched": ("XSAM", dict(alpha="auto", alpha_grid=[0.0, 0.5, 1.0, 1.5])),
}


class Bowl(nn.Module):
    """L = s·(½ Σ aᵢθᵢ² − Σ bᵢθᵢ), computed in float32 from θ of ``dtype``."""

    def __init__(self, dtype, s):
        super().__init__()
        self.a = torch.tensor([1.0, 2.0, 3.0, 4.0])
        self.b = torch.tensor([1.0, -1.0, 0.5, 2.0])
        self.s = s
        self.theta = nn.Parameter(torch.tensor([0.3, -0.2, 0.5, 0.1]).to(dtype))

    def forward(self):
        t = self.theta.float()
        return self.s * (0.5 * (self.a * t * t).sum() - (self.b * t).sum())


def one_update(dtype, s, variant):
    q = Bowl(dtype, s)
    cls, kw = VARIANTS[variant]
    opt = getattr(xsam, cls)(q.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, **kw)

    def closure():
        loss = q()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    opt.step(closure)
    return q, opt


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("s", [2e-6, 0.0])
def test_a_vanishing_float16_gradient_is_an_ordinary_update(variant, s):
    """‖g‖ ≈ 5e-6 (1/‖g‖ beyond float16's 65504) and g = 0: applied, finite, and d is the
    float32 run's to float16's resolution of those tiny values."""
    q, opt = one_update(torch.float16, s, variant)
    assert (opt.updates, opt.skipped_updates) == (1, 0)
    assert torch.isfinite(q.theta).all() and torch.isfinite(q.theta.grad).all()
    ref, ref_opt = one_update(torch.float32, s, variant)
    if variant == "xsam-searched":
        assert opt.alpha == ref_opt.alpha
    torch.testing.assert_close(q.theta.grad.float(), ref.theta.grad, rtol=0.05, atol=6e-8)


def test_add_scaled_and_scale_take_coefficients_beyond_float16s_range():
    x = [torch.tensor([1e-6, 0.0, -3e-7], dtype=torch.float16)]
    y = [torch.zeros(3, dtype=torch.float16)]
    add_scaled_(y, x, 1e6)
    expected = (x[0].float() * 1e6).half()
    assert torch.equal(y[0], expected)
    scale_(x, 1e6)
    assert torch.equal(x[0], expected)
    z = [torch.tensor([2.0, 0.0], dtype=torch.float16)]
    scale_(z, 0.5)
    assert torch.equal(z[0], torch.tensor([1.0, 0.0], dtype=torch.float16))
