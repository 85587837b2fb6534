"""A non-finite loss, gradient, direction or probe loss skips the update: the weights, the base
optimizer's state and the normalisation statistics stay bit-identical, whatever drives the
update (the closure, the lower-level path with no GradScaler, a disabled or an enabled one,
bfloat16 autocast), and nothing non-finite reaches the base optimizer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from toy import assert_same, closure_for, data, net, snapshot

import xsam


def all_finite(model, opt) -> bool:
    base = opt.base_optimizer if isinstance(opt, xsam.SAMFamily) else opt
    tensors = list(model.parameters()) + [
        v for st in base.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    ]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


SCALERS = ["none", "disabled", "enabled"]


def make_scaler(kind: str):
    if kind == "none":
        return None
    return torch.amp.GradScaler("cpu", enabled=kind == "enabled", init_scale=2.0**8)


@pytest.mark.parametrize("kind", SCALERS)
@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_skipped_lower_level_update_never_reaches_the_base_optimizer(kind, cls):
    """A NaN pass on the lower-level path: whatever scaler is handed to descent_step (enabled,
    disabled — the trainer's bf16 case — or none), weights, momentum and BatchNorm statistics
    stay bit-identical, and an enabled scaler lowers its scale."""
    model = net(bn=True)
    opt = getattr(xsam, cls)(
        model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, model=model
    )
    x, y = data()
    opt.step(closure_for(model, x, y))  # momentum buffers exist
    before = snapshot(model, opt)
    scaler = make_scaler(kind)
    scale0 = scaler.get_scale() if kind == "enabled" else None
    scale = scaler.scale if kind == "enabled" else (lambda t: t)
    with opt.clean_pass():
        scale(F.cross_entropy(model(x), y)).backward()
    opt.ascent_step()
    with opt.perturbed_pass():
        scale(F.cross_entropy(model(x), y) * float("nan")).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = opt.descent_step(loss_fn=lambda: F.cross_entropy(model(x), y), scaler=scaler)
    assert ok is False and opt.skipped_updates == 1
    assert_same(before, snapshot(model, opt))
    if kind == "enabled":
        scaler.update()
        assert scaler.get_scale() < scale0


def test_bf16_diverging_training_keeps_weights_and_state_finite():
    """The trainer's bf16 recipe (autocast, no loss scaling) at a diverging learning rate."""
    model = net(dtype=torch.float32)
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=1e38, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(6):
            x = torch.randn(16, 5, generator=g) * 100
            y = torch.randint(0, 3, (16,), generator=g)

            def fwd(x=x, y=y):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return F.cross_entropy(model(x), y)

            with opt.clean_pass():
                fwd().backward()
            opt.ascent_step()
            with opt.perturbed_pass():
                fwd().backward()
            opt.descent_step(loss_fn=fwd, scaler=scaler)
    assert opt.skipped_updates > 0
    assert all_finite(model, opt)


class NaNDirection(xsam.XSAM):
    """An XSAM whose direction overflows although every pass was finite."""

    def _descent(self, u, grads, loss_fn):
        super()._descent(u, grads, loss_fn)
        grads[0].view(-1)[0] = float("inf")
        return True


def test_a_non_finite_direction_never_reaches_the_base_optimizer():
    model = net()
    opt = NaNDirection(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = snapshot(model, opt)
        opt.step(closure_for(model, x, y))
    assert opt.skipped_updates == 1 and opt.updates == 0
    assert_same(before, snapshot(model, opt))


def test_non_finite_probe_loss_skips_the_update():
    model = net()
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9)
    x, y = data()
    probes = []

    def closure():
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        else:
            probes.append(1)
            if len(probes) == 7:
                loss = loss + float("inf")
        return loss

    before = snapshot(model, opt)
    with pytest.warns(RuntimeWarning, match="skipped"):
        opt.step(closure)
    assert opt.skipped_updates == 1 and opt.search_due
    assert_same(before, snapshot(model, opt))
