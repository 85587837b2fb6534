"""Clipping the applied direction: ``xsam.clip_direction_norm`` bounds every step the base
optimizer takes, full or cheap (reuse term included), on both APIs, unscaled under a GradScaler
(fused optimizers too), and matches a closed-form run; the integrations' clipping goes through
it, and a clip that returns a value (``clip_grad_norm_`` returns the norm) does not crash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy import closure_for, data, lower_level_step, net

import xsam
from xsam import PerturbationSchedule as Sched
from xsam.integrations.core import finish_update, norm_clip
from xsam.optim.clip import DirectionNormClip

SCHEDULE = Sched(every=2, reuse=0.7)


def clipped_step(model, opt, x, y, scaler=None):
    """The lower-level loop, then the scaler's update."""
    ok = lower_level_step(model, opt, x, y, scaler)
    if scaler is not None:
        scaler.update()
    return ok


def applied_norms(opt, params) -> list[float]:
    """Registered after the clip: the norm of what the base optimizer steps with."""
    norms: list[float] = []
    opt.base_optimizer.register_step_pre_hook(
        lambda base, a, k: norms.append(
            float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])))
        )
    )
    return norms


@pytest.mark.parametrize("lower", [False, True], ids=["closure", "lower-level"])
@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_every_applied_step_is_bounded_with_a_schedule_and_reuse(cls, lower):
    model = net()
    kw = dict(alpha=0.5) if cls == "XSAM" else {}
    opt = getattr(xsam, cls)(model.parameters(), torch.optim.SGD, rho=0.2, lr=0.1,
                             momentum=0.9, schedule=SCHEDULE, **kw)  # fmt: skip
    handle = xsam.clip_direction_norm(opt, 0.05)
    norms = applied_norms(opt, list(model.parameters()))
    before: list[float] = []
    for i in range(6):
        x, y = data(100 + i)
        lower_level_step(model, opt, x, y) if lower else opt.step(closure_for(model, x, y))
        before.append(float(handle.clip.last_norm))
    assert opt.cheap_updates == 3 and len(norms) == 6
    for b, n in zip(before, norms, strict=True):
        assert b > 0.05  # every step was clipped ...
        assert n == pytest.approx(0.05 * b / (b + 1e-6), rel=1e-9)  # ... to max_norm (torch's rule)


def test_clipped_sam_with_reuse_matches_the_closed_form():
    """SAM on a quadratic, a full update every other step, λ = 0.7, every applied d clipped to
    0.5 (torch's rule: d·min(1, m/(‖d‖ + 1e-6))): the weights follow the formula to 1e-12."""
    rng = np.random.default_rng(5)
    M = rng.normal(size=(4, 4))
    A, b, theta = M @ M.T + np.eye(4), rng.normal(size=4), rng.normal(size=4)
    p = nn.Parameter(torch.tensor(theta))
    At, bt = torch.tensor(A), torch.tensor(b)
    lr, lam, rho, m = 0.05, 0.7, 0.3, 0.5
    opt = xsam.SAM([p], torch.optim.SGD, rho=rho, lr=lr, schedule=Sched(every=2, reuse=lam))
    xsam.clip_direction_norm(opt, m)

    def closure():
        loss = 0.5 * p @ At @ p - bt @ p
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    def clip(d):
        return d * min(1.0, m / (np.linalg.norm(d) + 1e-6))

    th, v = theta.copy(), None
    for i in range(6):
        g = A @ th - b
        if i % 2 == 0:
            d = A @ (th + rho * g / np.linalg.norm(g)) - b  # SAM's g_k
            r = d - (d @ g) / (g @ g) * g
            v = r / np.linalg.norm(r)  # from the unclipped d: the reuse rule's own
        else:
            d = g + lam * np.linalg.norm(g) * v
        th = th - lr * clip(d)
        opt.step(closure)
        np.testing.assert_allclose(p.detach().numpy(), th, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", [dict(fused=True), dict(foreach=True)], ids=["fused", "foreach"])
def test_clipping_under_a_gradscaler_is_the_unscaled_run(form):
    """A power-of-two loss scale, AdamW: clipped steps bit-identical to the run without a
    scaler. Before the fix the fused AdamW clipped scale·d, a step about 1/scale too short."""
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        model = net(dtype=torch.float32)
        opt = xsam.XSAM(model.parameters(), torch.optim.AdamW, rho=0.2, alpha=0.5, lr=0.01,
                        schedule=SCHEDULE, **form)  # fmt: skip
        handle = xsam.clip_direction_norm(opt, 0.05)
        for i in range(4):
            x, y = data(100 + i, dtype=torch.float32)
            assert clipped_step(model, opt, x, y, scaler)
            assert float(handle.clip.last_norm) > 0.05
        runs.append([t.detach().clone() for t in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_a_skipped_update_clips_nothing():
    model = net()
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    handle = xsam.clip_direction_norm(opt, 0.05)
    x, y = data(1)
    x[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step(closure_for(model, x, y))
    assert handle.clip.last_norm is None


def test_remove_stops_clipping_and_a_plain_optimizer_is_accepted():
    model = net()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = xsam.clip_direction_norm(base, 1e-3)
    x, y = data(1)
    F.cross_entropy(model(x), y).backward()
    base.step()
    assert float(handle.clip.last_norm) > 1e-3
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-5)
    handle.remove()
    F.cross_entropy(model(x), y).backward()
    before = float(handle.clip.last_norm)
    base.step()
    assert float(handle.clip.last_norm) == before  # not called again


def test_a_clip_that_returns_the_norm_does_not_crash_the_integrations():
    """finish_update's clip may return a value (torch.nn.utils.clip_grad_norm_ returns the
    norm): torch refuses a step pre-hook that returns one, so it is discarded. Before the fix:
    RuntimeError in the middle of the update."""
    model = net()
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    x, y = data(1)
    with opt.clean_pass():
        F.cross_entropy(model(x), y).backward()

    def gradient_pass():
        F.cross_entropy(model(x), y).backward()

    def returns_norm(base):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)

    assert finish_update(opt, gradient_pass, lambda: F.cross_entropy(model(x), y),
                         clip=returns_norm)  # fmt: skip
    assert opt.updates == 1


def test_the_integrations_clip_with_the_public_hook():
    clip = norm_clip(0.25)
    assert isinstance(clip.__self__, DirectionNormClip) and clip.__self__.max_norm == 0.25
    assert norm_clip(None) is None and norm_clip(0.0) is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max_norm=0.0), ValueError, "max_norm must be finite and > 0"),
        (dict(max_norm=-1.0), ValueError, "max_norm must be finite and > 0"),
        (dict(max_norm=float("nan")), ValueError, "max_norm must be finite and > 0"),
        (dict(max_norm="1"), TypeError, "max_norm must be a real number"),
        (dict(max_norm=1.0, norm_type=0.0), ValueError, "norm_type must be > 0"),
    ],
)
def test_bad_clip_settings_are_refused_by_name(kwargs, error, match):
    opt = xsam.SAM(net().parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(error, match=match):
        xsam.clip_direction_norm(opt, **kwargs)


def test_something_that_is_not_an_optimizer_is_refused():
    with pytest.raises(TypeError, match="clip_direction_norm: optimizer must be"):
        xsam.clip_direction_norm(net(), 1.0)


def test_a_float16_direction_longer_than_65504_is_clipped_not_zeroed():
    """torch.nn.utils.clip_grad_norm_ takes a float16 gradient's norm in float16: inf above
    65504, and the 'clipped' gradient is zero. The norm is taken in float32 here."""
    p = nn.Parameter(torch.zeros(100_000, dtype=torch.float16))
    base = torch.optim.SGD([p], lr=1.0)
    handle = xsam.clip_direction_norm(base, 1.0)
    p.grad = torch.full((100_000,), 300.0, dtype=torch.float16)
    base.step()
    norm = 300.0 * 100_000**0.5
    assert float(handle.clip.last_norm) == pytest.approx(norm, rel=1e-4)  # a float32 sum
    assert float(torch.linalg.vector_norm(p.grad.float())) == pytest.approx(1.0, rel=1e-3)
    assert torch.equal(p.grad, torch.full_like(p.grad, p.grad[0])) and float(p.grad[0]) > 0
    assert torch.equal(p.detach(), -p.grad)
