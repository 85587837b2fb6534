"""LookSAM's reuse (``optim/_reuse.py``) at its edges: a direction d parallel to the clean
gradient g₀ leaves no vector (its orthogonal part is rounding noise), on the closure and the
lower-level path alike; and a cheap step with the reuse term is formed in float32 and checked as
the base optimizer will receive it (float16 parameters, a large gradient)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toy import closure_for, data, lower_level_step, net

import xsam
from xsam import PerturbationSchedule as Sched

REUSE = Sched(every=2, reuse=0.7)
PLAIN = Sched(every=2)  # the same schedule without the reuse term

# settings where d is g₀'s direction in exact arithmetic
PARALLEL = {
    "xsam-alpha-0": ("XSAM", dict(alpha=0.0)),
    "xsam-searched-0": ("XSAM", dict(alpha="auto", alpha_grid=[0.0], alpha_every=1)),
    "xsam-alpha-0-adaptive": ("XSAM", dict(alpha=0.0, adaptive=True)),
    "sam-rho-0": ("SAM", dict(rho=0.0)),
    "xsam-rho-0": ("XSAM", dict(rho=0.0, alpha=0.5)),
}


def make(cls, model, schedule, **kw):
    kw = {"rho": 0.2, "lr": 0.1, "momentum": 0.9, **kw}
    return getattr(xsam, cls)(model.parameters(), torch.optim.SGD, schedule=schedule, **kw)


def train(cls, kw, schedule, lower, n=5, dtype=torch.float64):
    model = net(dtype=dtype)
    opt = make(cls, model, schedule, **kw)
    for i in range(n):
        x, y = data(100 + i, dtype=dtype)
        if lower:
            lower_level_step(model, opt, x, y)
        else:
            opt.step(closure_for(model, x, y))
    return model, opt


def weights(model):
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("setting", sorted(PARALLEL))
@pytest.mark.parametrize("lower", [False, True], ids=["closure", "lower-level"])
def test_a_direction_parallel_to_g0_leaves_nothing_to_reuse(setting, lower):
    """Cheap steps after such a full update are the base optimizer's with g alone: the run is
    bit-identical to the same schedule without reuse (before the fix the normalised rounding
    noise was added with weight λ‖g‖)."""
    cls, kw = PARALLEL[setting]
    model, opt = train(cls, kw, REUSE, lower)
    twin, _ = train(cls, kw, PLAIN, lower)
    assert opt.cheap_updates == 2 and not opt.state_dict()["sam_family"]["reuse_valid"]
    for a, b in zip(weights(model), weights(twin), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("setting", sorted(PARALLEL))
def test_closure_and_lower_level_paths_agree_on_parallel_directions(setting):
    cls, kw = PARALLEL[setting]
    model, opt = train(cls, kw, REUSE, lower=False)
    twin, other = train(cls, kw, REUSE, lower=True)
    for a, b in zip(weights(model), weights(twin), strict=True):
        assert torch.equal(a, b)
    mine, theirs = opt.state_dict(), other.state_dict()
    assert mine["sam_family"] == theirs["sam_family"]
    for key, st in mine["state"].items():
        assert torch.equal(st["sam_reuse"], theirs["state"][key]["sam_reuse"])
        assert not st["sam_reuse"].any()


class Linear(nn.Module):
    """L(θ) = −⟨b, θ⟩: the gradient is the same everywhere, so SAM's d = g_k = g₀."""

    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.b = torch.randn(50, generator=g, dtype=torch.float64).to(dtype)
        self.theta = nn.Parameter(torch.randn(50, generator=g, dtype=torch.float64).to(dtype))

    def forward(self):
        return -(self.b * self.theta).sum().float()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_a_remainder_at_rounding_level_is_not_normalised_into_a_vector(dtype):
    """SAM on a linear loss: the orthogonal part of d is exactly zero in real arithmetic and a
    few ulps computed; the vector kept is zero and a cheap step is the plain base step."""
    q = Linear(dtype)
    opt = xsam.SAM(q.parameters(), torch.optim.SGD, rho=0.3, lr=0.01, schedule=REUSE)

    def closure():
        loss = q()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    opt.step(closure)
    assert not opt.state[q.theta]["sam_reuse"].any()
    twin = nn.Parameter(q.theta.detach().clone())
    twin.grad = -q.b.clone()
    torch.optim.SGD([twin], lr=0.01).step()
    opt.step(closure)  # cheap: the plain base step with g = −b
    assert opt.cheap_updates == 1
    assert torch.equal(q.theta.detach(), twin.detach())


def test_a_genuine_remainder_is_still_kept():
    """The threshold is at rounding level: an ordinary SAM update keeps its unit vector."""
    model, opt = train("SAM", {}, REUSE, lower=False, n=1)
    v = torch.cat([opt.state[p]["sam_reuse"].reshape(-1) for p in model.parameters()])
    assert opt.state_dict()["sam_family"]["reuse_valid"]
    torch.testing.assert_close(v.norm(), torch.tensor(1.0, dtype=v.dtype), rtol=1e-9, atol=0)


def test_a_full_update_with_rho_zero_drops_an_earlier_vector():
    """ρ set to 0 after a vector was kept (a ρ schedule): the ρ = 0 full update has nothing
    orthogonal to reuse, on both paths, so the next cheap step is plain."""
    runs = []
    for lower in (False, True):
        model = net()
        opt = make("SAM", model, Sched(every=2, reuse=0.7))
        for i in range(4):
            if i == 2:
                for g in opt.param_groups:
                    g["rho"] = 0.0
            x, y = data(100 + i)
            (lower_level_step(model, opt, x, y) if lower else opt.step(closure_for(model, x, y)))
        assert not opt.state_dict()["sam_family"]["reuse_valid"]
        runs.append(weights(model))
    twin = net()
    opt = make("SAM", twin, Sched(every=2, reuse=0.7))
    for i in range(4):
        if i == 2:
            for g in opt.param_groups:
                g["rho"] = 0.0
            opt.schedule = Sched(every=2)  # from here on: no reuse term
        opt.step(closure_for(twin, *data(100 + i)))
    for run in runs:
        for a, b in zip(run, weights(twin), strict=True):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ cheap steps in half precision
class Tilted(nn.Module):
    """L(θ) = −⟨b, θ⟩ in float32 over float16 θ: g = −b, exactly representable in float16."""

    def __init__(self, b):
        super().__init__()
        self.b = torch.tensor(b, dtype=torch.float16)
        self.theta = nn.Parameter(torch.zeros(len(b), dtype=torch.float16))

    def forward(self):
        return -(self.b.float() * self.theta.float()).sum()


def with_vector(q, v, lam, lr=1e-6, momentum=0.0):
    """A SAM whose next step is cheap and reuses the unit vector ``v`` (through a state_dict,
    as after a resume)."""
    opt = xsam.SAM(q.parameters(), torch.optim.SGD, rho=0.1, lr=lr, momentum=momentum,
                   schedule=Sched(every=2, reuse=lam))  # fmt: skip
    sd = opt.state_dict()
    sd["sam_family"] = {**sd["sam_family"], "step_index": 1, "reuse_valid": True}
    sd["state"] = {0: {"sam_reuse": torch.tensor(v, dtype=torch.float16)}}
    opt.load_state_dict(sd)
    assert not opt.perturb_due
    return opt


def closure_of(q):
    def closure():
        loss = q()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure


def test_a_reuse_term_beyond_float16s_range_is_formed_in_float32():
    """‖g‖ = 1.6e5 (1024 elements of 5e3): λ‖g‖ = 1.1e5 exceeds float16's range, the gradient
    g + λ‖g‖·v = (−1.5e3, ...) does not. Before the fix: an exception in the middle of step()."""
    n = 1024
    q = Tilted([5e3] * n)
    v = [1.0 / 32.0] * n  # unit
    opt = with_vector(q, v, 0.7)
    opt.step(closure_of(q))
    g = torch.full((n,), -5e3)
    expected = (g + 0.7 * g.norm() * torch.tensor(v)).half()
    assert torch.equal(q.theta.grad, expected)  # rounded once, from float32
    assert (opt.cheap_updates, opt.skipped_updates) == (1, 0)
    twin = nn.Parameter(torch.zeros(n, dtype=torch.float16))
    twin.grad = expected.clone()
    torch.optim.SGD([twin], lr=1e-6).step()
    assert torch.equal(q.theta.detach(), twin.detach())


def test_a_cheap_step_whose_gradient_overflows_float16_is_skipped():
    """g = (5e4, 5e4)·(−1), v = (−1, 1)/√2, λ = 0.9: g + λ‖g‖v = (−9.5e4, −5e3), beyond float16.
    Before the fix the base optimizer stepped with inf (weights inf, skipped_updates 0)."""
    q = Tilted([5e4, 5e4])
    s = 2.0**-0.5
    opt = with_vector(q, [-s, s], 0.9, momentum=0.9)
    before = q.theta.detach().clone()
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step(closure_of(q))
    assert torch.equal(q.theta.detach(), before)
    assert (opt.updates, opt.cheap_updates, opt.skipped_updates, opt.step_index) == (0, 0, 1, 2)
    assert not opt.base_optimizer.state  # the base optimizer never stepped (no momentum)
