"""An update abandoned half-way, by ``abort_update()`` or by an exception in any of its passes,
puts back the weights and the normalisation statistics exactly and leaves no update in
progress."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from toy import assert_same, closure_for, data, net, snapshot

import xsam


def test_abort_update_restores_weights_and_statistics_exactly():
    model = net(bn=True)
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.2, steps=2, lr=0.1, model=model)
    x, y = data()
    before = snapshot(model, opt)
    with opt.clean_pass():
        F.cross_entropy(model(x), y).backward()
    opt.ascent_step()
    with opt.perturbed_pass():
        F.cross_entropy(model(x), y).backward()
    assert opt.update_in_progress
    opt.abort_update()  # e.g. the second ascent pass ran out of memory
    assert not opt.update_in_progress
    assert_same(before, snapshot(model, opt))
    assert all(p.grad is None for p in model.parameters())
    # the next update is the one a fresh optimizer would make
    twin = copy.deepcopy(model)
    fresh = xsam.XSAM(twin.parameters(), torch.optim.SGD, rho=0.2, steps=2, lr=0.1, model=twin)
    opt.step(closure_for(model, x, y))
    fresh.step(closure_for(twin, x, y))
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(a, b)


class Boom(Exception):
    pass


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_exception_in_any_pass_restores_weights_and_batchnorm_statistics(fail_at):
    """The closure raises in the ascent pass (1), in the second ascent pass (2) or in an α
    probe (3): weights and BatchNorm running statistics (which the clean pass had already
    moved) come back bit for bit."""
    model = net(bn=True)
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.2, steps=2, lr=0.1, model=model)
    x, y = data()
    before = snapshot(model, opt)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == fail_at + 1:
            raise Boom
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    with pytest.raises(Boom):
        opt.step(closure)
    assert_same(before, snapshot(model, opt))
    assert not opt.update_in_progress and opt.updates == 0
