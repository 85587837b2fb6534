"""The optimizer's state beyond one update: copies (``copy.deepcopy``, pickle) train exactly like
the original and are refused in the middle of an update; ``torch.distributed.checkpoint``
round-trips it; state_dict hooks registered on the wrapper run; a checkpoint never silently
replaces a fixed α."""

from __future__ import annotations

import copy
import datetime
import os
import pickle
import socket

import pytest
import torch
import torch.nn.functional as F
from toy import closure_for, data, net

import xsam


def _train_pair(model, opt, n=3):
    for i in range(n):
        opt.step(closure_for(model, *data(seed=10 + i)))
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
def test_copied_optimizer_trains_exactly_like_the_original(how, cls):
    model = net(bn=True)
    kw = dict(rho=0.1, lr=0.1, momentum=0.9, model=model)
    if cls == "XSAM":
        kw["alpha_every"] = 2
    opt = getattr(xsam, cls)(model.parameters(), torch.optim.SGD, **kw)
    _train_pair(model, opt, 2)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    assert opt2.model is model2
    assert opt2.base_optimizer.param_groups is opt2.param_groups
    assert torch.equal(_train_pair(model, opt, 3), _train_pair(model2, opt2, 3))
    assert opt2.updates == opt.updates
    for a, b in zip(model.buffers(), model2.buffers(), strict=True):
        assert torch.equal(a, b)


def test_copy_is_refused_in_the_middle_of_an_update():
    model = net()
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    opt.ascent_step()
    with pytest.raises(RuntimeError, match="middle of an update"):
        copy.deepcopy(opt)
    opt.abort_update()
    copy.deepcopy(opt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_one_process():
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("schedule", [None, xsam.PerturbationSchedule(every=2, reuse=0.5)])
def test_torch_distributed_checkpoint_round_trip(gloo_one_process, tmp_path, schedule):
    """get_optimizer_state_dict → dcp.save → dcp.load → set_optimizer_state_dict into a fresh
    optimizer (which DCP initialises with step(None)): training then continues bit for bit,
    the α schedule and the perturbation schedule's place and reuse vector included."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    kw = dict(rho=0.1, lr=0.1, momentum=0.9, alpha_every=3, schedule=schedule)
    model = net()
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, **kw)
    _train_pair(model, opt, 3)
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(tmp_path))

    model2 = net(seed=5)
    model2.load_state_dict(model.state_dict())
    opt2 = xsam.XSAM(model2.parameters(), torch.optim.SGD, **kw)
    template = {"optim": get_optimizer_state_dict(model2, opt2)}
    assert torch.equal(
        torch.cat([p.detach().reshape(-1) for p in model2.parameters()]),
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
    )  # DCP's state initialisation left the weights alone
    dcp.load(template, checkpoint_id=str(tmp_path))
    set_optimizer_state_dict(model2, opt2, template["optim"])
    assert opt2.updates == 3 and opt2.alpha == opt.alpha
    assert opt2.step_index == 3 and opt2.cheap_updates == opt.cheap_updates
    assert "sam_family" not in opt2.param_groups[0]
    assert torch.equal(_train_pair(model, opt, 3), _train_pair(model2, opt2, 3))


def test_state_dict_hooks_registered_on_the_wrapper_run():
    model = net()
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, lr=0.1)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "note": "kept"})
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load-post"))
    sd = opt.state_dict()
    assert sd["note"] == "kept"
    opt.load_state_dict(sd)
    assert seen == ["pre", "load-pre", "load-post"]


def test_fixed_alpha_is_not_silently_replaced_by_a_checkpoint():
    model = net()
    a = xsam.XSAM(model.parameters(), torch.optim.SGD, alpha=1.0, lr=0.1)
    b = xsam.XSAM(model.parameters(), torch.optim.SGD, alpha=0.5, lr=0.1)
    x, y = data()
    a.step(closure_for(model, x, y))  # a has momentum state, b has none
    with pytest.raises(ValueError, match="fixed alpha=1"):
        b.load_state_dict(a.state_dict())
    assert b.alpha == 0.5 and b.updates == 0 and not b.base_optimizer.state  # nothing loaded
    c = xsam.XSAM(model.parameters(), torch.optim.SGD, alpha=1.0, lr=0.1)
    c.load_state_dict(a.state_dict())
