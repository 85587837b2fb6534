"""The base-optimizer contract: whatever the base optimizer (every ``torch.optim`` class, in its
single-tensor, foreach and fused forms where torch has them) and whatever drives the update
(the closure, the lower-level path with no GradScaler, a disabled one, an enabled one, bfloat16
autocast), every step pre-hook of the base optimizer and the base optimizer itself see the same
unscaled direction ``d``, and the weights are the independent reference's
(tests/reference.py) after three updates. An enabled GradScaler with a power-of-two scale
changes nothing at all: the weights are bit-identical to the unscaled run.

Before the fix, ``fused=True`` optimizers under an enabled GradScaler handed their step
pre-hooks (hence every clipping of ``d``) ``scale·d``: GradScaler.step does not unscale an
optimizer that takes the scale into its own kernel."""

from __future__ import annotations

import inspect
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xsam

sys.path.insert(0, os.path.dirname(__file__))
from reference import reference_update  # noqa: E402

# every torch.optim class with settings that make each of its rules do something
SETTINGS: dict[str, dict] = {
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "Adam": dict(lr=0.01, weight_decay=1e-3, amsgrad=True),
    "AdamW": dict(lr=0.01, weight_decay=1e-2),
    "Adagrad": dict(lr=0.05, weight_decay=1e-3),
    "Adamax": dict(lr=0.01),
    "NAdam": dict(lr=0.01, decoupled_weight_decay=True, weight_decay=1e-2),
    "RAdam": dict(lr=0.01),
    "RMSprop": dict(lr=0.01, momentum=0.5, alpha=0.9, centered=True),  # alpha: base_kwargs
    "Rprop": dict(lr=0.01),
    "ASGD": dict(lr=0.05, t0=1.0),
    "Adafactor": dict(lr=0.01),
    "Muon": dict(lr=0.02),  # two-dimensional parameters only
}
# refused at construction, with the reason in the message (see test_unsupported_base_optimizers)
# (Adadelta's own "rho" would collide with the wrapper's in the shared param groups)
REFUSED = {"LBFGS": "closure", "SparseAdam": "sparse", "Adadelta": "rho"}
MODES = ["closure", "none", "disabled", "enabled", "bf16"]
SCALE = 2.0**7


def forms(name: str) -> list[str]:
    """The implementations torch offers for ``name``: single-tensor, foreach, fused."""
    params = inspect.signature(getattr(torch.optim, name).__init__).parameters
    out = ["single", "foreach"] if "foreach" in params else ["default"]
    return out + (["fused"] if "fused" in params else [])


CASES = [(name, form) for name in SETTINGS for form in forms(name)]


def base_kwargs(name: str, form: str) -> dict:
    kw = dict(SETTINGS[name])
    if form in ("single", "foreach"):
        kw["foreach"] = form == "foreach"
    elif form == "fused":
        kw["fused"] = True
    return kw


def model_for(name: str, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    bias = name != "Muon"
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias)).to(
        dtype
    )


def batch(i: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(10 + i)
    return torch.randn(8, 4, generator=g).to(dtype), torch.randint(0, 3, (8,), generator=g)


def loss_of(model: nn.Module, x, y, mode: str) -> torch.Tensor:
    if mode == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        return F.cross_entropy(out.float(), y)
    return F.cross_entropy(model(x), y)


def record(opt: torch.optim.Optimizer, params: list[nn.Parameter], seen: list) -> None:
    """A step pre-hook that keeps what the base optimizer is about to step with."""
    opt.register_step_pre_hook(
        lambda base, args, kwargs: seen.append([p.grad.detach().clone() for p in params])
    )


def xsam_update(model, opt, x, y, mode: str) -> None:
    def closure():
        loss = loss_of(model, x, y, mode)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    if mode in ("closure", "bf16"):
        opt.step(closure)
        return
    scaler = None if mode == "none" else torch.amp.GradScaler("cpu", enabled=mode == "enabled",
                                                               init_scale=SCALE)  # fmt: skip
    scale = scaler.scale if mode == "enabled" else (lambda t: t)
    full = opt.perturb_due
    opt.zero_grad()
    with opt.clean_pass():
        scale(loss_of(model, x, y, mode)).backward()
    if full:
        opt.ascent_step()
        with opt.perturbed_pass():
            scale(loss_of(model, x, y, mode)).backward()
    assert opt.descent_step(scaler=scaler)
    if mode == "enabled":
        scaler.update()
        assert scaler.get_scale() == SCALE  # nothing overflowed, nothing grew


def build(name: str, form: str, model: nn.Module, schedule=None) -> xsam.XSAM:
    return xsam.XSAM(model.parameters(), getattr(torch.optim, name), rho=0.1, alpha=0.5,
                     base_kwargs=base_kwargs(name, form), schedule=schedule)  # fmt: skip


def run(name: str, form: str, mode: str, dtype: torch.dtype, n: int = 3, schedule=None):
    model = model_for(name, dtype)
    opt = build(name, form, model, schedule)
    seen: list = []
    record(opt.base_optimizer, list(model.parameters()), seen)
    for i in range(n):
        xsam_update(model, opt, *batch(i, dtype), mode)
    return model, seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, form", CASES)
def test_every_base_optimizer_sees_the_unscaled_direction_of_the_reference(name, form, mode):
    dtype = torch.float32 if mode == "bf16" else torch.float64
    model, seen = run(name, form, mode, dtype)

    twin = model_for(name, dtype)
    params = list(twin.parameters())
    base = getattr(torch.optim, name)(params, **base_kwargs(name, form))
    for i in range(3):
        x, y = batch(i, dtype)
        loss_fn = lambda x=x, y=y: loss_of(twin, x, y, mode)  # noqa: E731
        ref = reference_update([params], loss_fn, base.step, rho=0.1, alpha=0.5)
        tol = dict(rtol=2e-5, atol=1e-6) if mode == "bf16" else dict(rtol=1e-9, atol=1e-12)
        for mine, theirs in zip(seen[i], ref["d"], strict=True):
            torch.testing.assert_close(mine, theirs, **tol)  # what the hook saw: d, unscaled
    assert len(seen) == 3
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine.detach(), theirs.detach(), rtol=1e-5 if mode == "bf16"
                                   else 1e-9, atol=1e-7 if mode == "bf16" else 1e-12)  # fmt: skip


@pytest.mark.parametrize("name, form", CASES)
def test_a_power_of_two_loss_scale_changes_nothing_bit_for_bit(name, form):
    """Full updates and cheap steps with LookSAM's reuse term (every other step)."""
    schedule = xsam.PerturbationSchedule(every=2, reuse=0.5)
    plain, seen_plain = run(name, form, "none", torch.float32, 4, schedule)
    scaled, seen_scaled = run(name, form, "enabled", torch.float32, 4, schedule)
    assert len(seen_plain) == len(seen_scaled) == 4
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(sum(seen_plain, []), sum(seen_scaled, []), strict=True):
        assert torch.equal(a, b)


def test_every_torch_optimizer_is_covered_or_refused():
    """A torch release that adds an optimizer class makes this fail until it is added above."""
    found = {
        n
        for n, c in vars(torch.optim).items()
        if isinstance(c, type)
        and issubclass(c, torch.optim.Optimizer)
        and c is not torch.optim.Optimizer
    }
    assert found == set(SETTINGS) | set(REFUSED)
    assert {f for _, f in CASES} >= {"single", "foreach", "fused"}
    assert {n for n, f in CASES if f == "fused"} == {"SGD", "Adam", "AdamW", "Adagrad"}


@pytest.mark.parametrize("name, reason", sorted(REFUSED.items()))
def test_unsupported_base_optimizers_are_refused_with_the_reason(name, reason):
    model = model_for("SGD", torch.float64)
    for cls in (xsam.SAM, xsam.XSAM):
        with pytest.raises(ValueError, match=rf"{name}.*{reason}"):
            cls(model.parameters(), getattr(torch.optim, name), lr=0.1)


def test_a_skipped_update_under_a_fused_optimizer_and_a_scaler_changes_nothing():
    model = model_for("Adam", torch.float32)
    opt = build("Adam", "fused", model)
    seen: list = []
    record(opt.base_optimizer, list(model.parameters()), seen)
    xsam_update(model, opt, *batch(0, torch.float32), "enabled")
    before = [p.detach().clone() for p in model.parameters()]
    state = [v.clone() for s in opt.base_optimizer.state.values() for v in s.values()]
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    x, y = batch(1, torch.float32)
    x[0, 0] = float("inf")
    opt.zero_grad()
    with opt.clean_pass():
        scaler.scale(loss_of(model, x, y, "none")).backward()
    opt.ascent_step()
    with opt.perturbed_pass():
        scaler.scale(loss_of(model, x, y, "none")).backward()
    with pytest.warns(RuntimeWarning, match="skipped"):
        assert not opt.descent_step(scaler=scaler)
    scaler.update()
    assert scaler.get_scale() == SCALE / 2 and len(seen) == 1 and opt.skipped_updates == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = [v for s in opt.base_optimizer.state.values() for v in s.values()]
    assert len(state) == len(after) and all(torch.equal(a, b) for a, b in zip(state, after))
