"""Parity of xsam.XSAM / xsam.SAM with the independent plain implementation in reference.py.

Several updates in float64 on a small network with BatchNorm; after every update the weights,
BN statistics, α and ψ must agree to float precision. The reference is written literally from
docs/algorithm.md (torch.cat vectors, arccos, a different BN mechanism), so a shared mistake would
have to be made twice, independently.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reference import reference_update
from torch import nn

import xsam

DT = torch.float64


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.Softplus(),
        nn.Linear(8, 4),
    ).to(DT)


def batches(n: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(12, 6, generator=g, dtype=DT), torch.randint(0, 4, (12,), generator=g))
        for _ in range(n)
    ]


def groups_of(model: nn.Module, two_groups: bool):
    ps = list(model.parameters())
    return [ps[:4], ps[4:]] if two_groups else [ps]


BASES = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}),
    "adamw": (torch.optim.AdamW, {"lr": 3e-3, "weight_decay": 0.05}),
}


def run_pair(
    *,
    steps,
    alpha,
    base="sgd",
    two_groups=False,
    adaptive=False,
    n_updates=4,
    alpha_every=2,
    rho=0.3,
    rho_max=None,
):
    data = batches(n_updates)
    lib_model, ref_model = net(), net()
    base_cls, base_kw = BASES[base]
    lr2 = {"lr": base_kw["lr"] * 0.5}
    rhos = [rho, rho * 0.5] if two_groups else [rho]

    lib_groups = [{"params": g, "rho": r} for g, r in zip(groups_of(lib_model, two_groups), rhos)]
    if two_groups:
        lib_groups[1].update(lr2)
    opt = xsam.XSAM(
        lib_groups,
        base_cls,
        rho=rho,
        steps=steps,
        alpha=alpha,
        rho_max=rho_max,
        alpha_every=alpha_every if alpha == "auto" else 400,
        adaptive=adaptive,
        model=lib_model,
        **base_kw,
    )

    ref_groups = groups_of(ref_model, two_groups)
    base_groups = [{"params": g} for g in ref_groups]
    if two_groups:
        base_groups[1].update(lr2)
    ref_base = base_cls(base_groups, **base_kw)
    ref_alpha = None
    bn = [m for m in ref_model.modules() if isinstance(m, nn.BatchNorm1d)]

    for i, (x, y) in enumerate(data):

        def closure(x=x, y=y):
            loss = F.cross_entropy(lib_model(x), y)
            if torch.is_grad_enabled():
                loss.backward()
            return loss

        lib_loss = opt.step(closure)

        if alpha == "auto":
            a_arg = None if i % alpha_every == 0 else ref_alpha
        else:
            a_arg = float(alpha)

        def ref_base_step():
            ref_base.step()

        out = reference_update(
            ref_groups,
            lambda x=x, y=y: F.cross_entropy(ref_model(x), y),
            ref_base_step,
            rho=rhos if two_groups else rho,
            steps=steps,
            alpha=a_arg,
            rho_max=rho_max,
            adaptive=adaptive,
            eta=0.01,
            bn_modules=bn,
        )
        ref_alpha = out["alpha"]
        assert float(lib_loss.detach()) == pytest.approx(out["loss0"], rel=1e-12)
        assert opt.alpha == ref_alpha
        if alpha != 1.0:
            assert opt.last_stats["psi"] == pytest.approx(out["psi"], rel=1e-7, abs=1e-9)
        if out["probe_losses"] is not None:
            torch.testing.assert_close(
                torch.tensor(opt.last_probe_losses, dtype=DT),
                torch.tensor(out["probe_losses"], dtype=DT),
                rtol=1e-9,
                atol=1e-12,
            )
        for (name, a), b in zip(lib_model.state_dict().items(), ref_model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"update {i}: {name}")
    return opt


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 1.7, "auto"])
def test_parity_sgd(steps, alpha):
    run_pair(steps=steps, alpha=alpha)


@pytest.mark.parametrize("alpha", [0.5, "auto"])
def test_parity_adamw(alpha):
    run_pair(steps=2, alpha=alpha, base="adamw")


@pytest.mark.parametrize("alpha", [0.0, 1.0, "auto"])
def test_parity_two_groups_per_group_rho_and_lr(alpha):
    run_pair(steps=2, alpha=alpha, two_groups=True, rho_max=0.5)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, "auto"])
def test_parity_adaptive(steps, alpha):
    run_pair(steps=steps, alpha=alpha, adaptive=True, rho=1.0)


def test_parity_sam_class_equals_reference_alpha_one():
    data = batches(3)
    lib_model, ref_model = net(), net()
    opt = xsam.SAM(
        lib_model.parameters(),
        torch.optim.SGD,
        rho=0.2,
        steps=2,
        lr=0.1,
        momentum=0.9,
        model=lib_model,
    )
    ref_base = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    bn = [m for m in ref_model.modules() if isinstance(m, nn.BatchNorm1d)]
    for x, y in data:

        def closure(x=x, y=y):
            loss = F.cross_entropy(lib_model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        reference_update(
            [list(ref_model.parameters())],
            lambda x=x, y=y: F.cross_entropy(ref_model(x), y),
            ref_base.step,
            rho=0.2,
            steps=2,
            alpha=1.0,
            bn_modules=bn,
        )
    for a, b in zip(lib_model.state_dict().values(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    assert math.isfinite(opt.last_stats["gk_norm"])
