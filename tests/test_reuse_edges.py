"""LookSAM's reuse at its edges: a direction d parallel to the clean gradient g₀ leaves no
vector (its orthogonal part is rounding noise), on the closure and the lower-level path alike;
and a cheap step with the reuse term is formed in float32 and checked as the base optimizer
will receive it (float16 parameters, a large gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy import closure_for, data, net

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


def lower_level_step(model, opt, x, y):
    full = opt.perturb_due
    opt.zero_grad()
    with opt.clean_pass():
        F.cross_entropy(model(x), y).backward()
    if full:
        for _ in range(opt.steps):
            opt.ascent_step()
            with opt.perturbed_pass():
                F.cross_entropy(model(x), y).backward()

    def probe():
        with torch.no_grad():
            return F.cross_entropy(model(x), y)

    return opt.descent_step(loss_fn=probe)


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
