"""The optimizers' arguments: constructor keywords split between the wrapper and the base
optimizer (an ambiguous keyword refused and ``base_kwargs`` resolving it, SAM refusing XSAM's
settings), the types ρ accepts, per-group values checked at construction and again at step
(eta with adaptive XSAM, values set after construction, a group added through the base
optimizer), and parameters the update cannot handle (meta, complex) named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from toy import assert_same, closure_for, data, net, snapshot

import xsam


def test_adaptive_xsam_refuses_eta_zero_in_any_group():
    model = net()
    groups = [
        {"params": [model[0].weight], "eta": 0.0},
        {"params": [p for n, p in model.named_parameters() if n != "0.weight"]},
    ]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['eta'\]"):
        xsam.XSAM(groups, torch.optim.SGD, adaptive=True, lr=0.1)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("rho", -0.1, r"param_groups\[1\]\['rho'\] must be finite and >= 0"),
        ("rho", float("nan"), r"param_groups\[1\]\['rho'\]"),
        ("rho_max", 0.0, r"param_groups\[1\]\['rho_max'\] must be finite and > 0"),
        ("eta", 0.0, r"param_groups\[1\]\['eta'\] must be > 0"),
        ("adaptive", "yes", r"param_groups\[1\]\['adaptive'\] must be a bool"),
    ],
)
def test_group_values_set_after_construction_are_checked_at_step(key, value, message):
    model = net()
    opt = xsam.XSAM(
        [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}],
        torch.optim.SGD,
        adaptive=True,
        lr=0.1,
    )
    opt.param_groups[1][key] = value
    before = snapshot(model, opt)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.step(closure_for(model, *data()))
    assert_same(before, snapshot(model, opt))
    assert all(p.grad is None for p in model.parameters())


def test_group_added_through_the_base_optimizer_gets_the_wrapper_defaults():
    model = net()
    opt = xsam.XSAM(list(model[0].parameters()), torch.optim.SGD, rho=0.1, lr=0.1, alpha=0.5)
    opt.base_optimizer.add_param_group({"params": list(model[2].parameters())})
    twin = net()
    ref = xsam.XSAM(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, alpha=0.5)
    x, y = data()
    opt.step(closure_for(model, x, y))
    ref.step(closure_for(twin, x, y))
    assert opt.param_groups[1]["rho"] == 0.1
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_ambiguous_keyword_is_refused_and_base_kwargs_resolves_it():
    model = net()
    with pytest.raises(ValueError, match="'alpha' is both a XSAM setting and a RMSprop"):
        xsam.XSAM(model.parameters(), torch.optim.RMSprop, alpha=0.9, lr=0.01)
    opt = xsam.XSAM(
        model.parameters(), torch.optim.RMSprop, alpha=0.5, base_kwargs={"alpha": 0.9, "lr": 0.01}
    )
    assert opt.alpha == 0.5 and opt.param_groups[0]["alpha"] == 0.9
    # not written: no ambiguity, RMSprop keeps its own default
    opt = xsam.XSAM(model.parameters(), torch.optim.RMSprop, lr=0.01)
    assert opt.param_groups[0]["alpha"] == 0.99 and opt.alpha_mode == "auto"


def test_sam_refuses_xsam_settings_with_its_own_message():
    model = net()
    with pytest.raises(ValueError, match="SAM got alpha=1, which is an XSAM setting"):
        xsam.SAM(model.parameters(), torch.optim.SGD, alpha=1, lr=0.1)
    with pytest.raises(ValueError, match="base_kwargs"):
        xsam.SAM(model.parameters(), torch.optim.RMSprop, alpha=0.9, lr=0.1)
    opt = xsam.SAM(model.parameters(), torch.optim.RMSprop, base_kwargs={"alpha": 0.9}, lr=0.1)
    assert opt.param_groups[0]["alpha"] == 0.9
    with pytest.raises(ValueError, match="both as keywords and in base_kwargs"):
        xsam.SAM(model.parameters(), torch.optim.SGD, base_kwargs={"lr": 0.1}, lr=0.2)


@pytest.mark.parametrize(
    "rho", [np.float32(0.1), np.float64(0.1), np.int64(0), torch.tensor(0.1), torch.tensor([0.1])]
)
def test_rho_accepts_numpy_scalars_and_one_element_tensors(rho):
    model = net()
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=rho, rho_max=np.float32(0.3), lr=0.1)
    assert isinstance(opt.param_groups[0]["rho"], float)
    assert opt.param_groups[0]["rho"] == pytest.approx(float(rho))
    opt.param_groups[0]["rho"] = np.float32(0.05)  # as a scheduler might set it
    opt.step(closure_for(model, *data()))
    assert opt.param_groups[0]["rho"] == pytest.approx(0.05)


def test_rho_refuses_bools_strings_and_complex():
    model = net()
    for bad in (True, "0.1", 0.1j, torch.tensor([0.1, 0.2])):
        with pytest.raises(TypeError, match="rho must be a real number"):
            xsam.SAM(model.parameters(), torch.optim.SGD, rho=bad, lr=0.1)


def test_meta_parameters_get_a_clear_error():
    with torch.device("meta"):
        model = nn.Linear(5, 3)
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, lr=0.1, model=model)
    x = torch.randn(4, 5, device="meta")

    def closure():
        loss = model(x).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="parameter 'weight'.*meta device.*materialise"):
        opt.step(closure)


def test_complex_parameter_error_names_the_parameter():
    model = nn.Linear(4, 2)
    model.register_parameter("c", nn.Parameter(torch.zeros(3, dtype=torch.complex64)))
    with pytest.raises(ValueError, match=r"parameter 'c' \(param_groups\[0\]\['params'\]\[2\]\)"):
        xsam.SAM(model.parameters(), torch.optim.SGD, lr=0.1, model=model)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[2\] of shape \(3,\)"):
        xsam.SAM(model.parameters(), torch.optim.SGD, lr=0.1)
