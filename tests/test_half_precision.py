"""float16 parameters with a vanishing gradient: the update's scalars (ρ/‖g‖, 1/‖g_k‖) then lie
beyond float16's range although every product they form does not. Before the fix torch refused
the ascent's ``alpha`` (an exception in the middle of ``step()``) and rounded XSAM's 1/‖g_k‖ to
inf (0·inf = NaN probes: every update skipped)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xsam
from xsam.optim._vec import add_scaled_, scale_

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
