"""``step`` and the lower-level path at their edges: ``step()`` without a closure is refused
(outside ``torch.distributed.checkpoint``'s state initialisation), ``step(closure)`` returns a
detached loss, and ρ = 0 on the lower-level path is the base optimizer's step."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from toy import closure_for, data, net

import xsam


def test_step_without_closure_still_refused_outside_state_initialisation():
    model = net()
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    F.cross_entropy(model(data()[0]), data()[1]).backward()
    for g in opt.param_groups:
        g["lr"] = 0.0
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()  # gradients are not zero: this is a forgotten closure, not DCP


@pytest.mark.parametrize("rho", [0.0, 0.1])
def test_step_returns_a_detached_loss(rho):
    model = net()
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
    loss = opt.step(closure_for(model, *data()))
    assert isinstance(loss, torch.Tensor) and not loss.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        float(loss)


@pytest.mark.parametrize("alpha", [0.0, 0.5, "auto"])
def test_rho_zero_on_the_lower_level_path_is_the_base_step(alpha):
    """ρ = 0: XSAM's v₀ is 0, so its v(α) used to scale the gradient by sin(απ/2)."""
    model, twin = net(), net()
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.0, alpha=alpha, lr=0.1)
    base = torch.optim.SGD(twin.parameters(), lr=0.1)
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    opt.ascent_step()
    F.cross_entropy(model(x), y).backward()
    assert opt.descent_step(loss_fn=lambda: F.cross_entropy(model(x), y))
    F.cross_entropy(twin(x), y).backward()
    base.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
