"""Normalisation running statistics around an update (``xsam.norm_stats``), read from the
model as it is now. Nothing the optimizers need is captured at construction: a model moved or
converted after the optimizer was built (``model.to(...)``, ``.double()``, ``module._apply``,
what ``accelerator.prepare`` does) replaces its buffer tensors but keeps its parameters, and
training goes on; a skipped or abandoned update must still put back exactly the running
statistics the model holds now, and everything else read from the model must be the model as it
is now."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toy import closure_for, data, net

import xsam
from xsam.analysis.vectors import FlatModel
from xsam.norm_stats import NormStatsSnapshot

MOVES = {
    "double": lambda m: m.double(),
    "to float64": lambda m: m.to(torch.float64),
    "to float64 and back": lambda m: m.to(torch.float64).to(torch.float32),
    "_apply clone": lambda m: m._apply(lambda t: t.clone()),
}


def stats(model) -> list[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def moved(move: str, cls: str = "SAM"):
    """A float32 model with BatchNorm, its optimizer built first, then the model moved and one
    update applied (so the statistics are not at their initial values)."""
    model = net(bn=True, dtype=torch.float32)
    kw = {"alpha_every": 1} if cls == "XSAM" else {}
    opt = getattr(xsam, cls)(
        model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=model, **kw
    )
    old = stats(model)
    MOVES[move](model)
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(old, model.buffers()))
    x, y = data(0, dtype=next(model.parameters()).dtype)
    opt.step(closure_for(model, x, y))
    return model, opt, x, y


@pytest.mark.parametrize("cls", ["SAM", "XSAM"])
@pytest.mark.parametrize("move", list(MOVES))
def test_a_skipped_update_restores_the_statistics_of_a_moved_model(move, cls):
    model, opt, x, y = moved(move, cls)
    before, weights = stats(model), [p.detach().clone() for p in model.parameters()]

    def nan_loss():  # the clean pass runs (and writes the statistics), its loss is NaN
        loss = F.cross_entropy(model(x), y) * float("nan")
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    with pytest.warns(RuntimeWarning, match="update skipped"):
        opt.step(nan_loss)
    assert opt.skipped_updates == 1
    assert identical(stats(model), before)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))


@pytest.mark.parametrize("move", list(MOVES))
def test_an_aborted_update_restores_the_statistics_of_a_moved_model(move):
    model, opt, x, y = moved(move)
    before = stats(model)
    with opt.clean_pass():  # lower level: abandoned after the first ascent pass
        F.cross_entropy(model(x), y).backward()
    opt.ascent_step()
    with opt.perturbed_pass():
        F.cross_entropy(model(x), y).backward()
    opt.abort_update()
    assert identical(stats(model), before)

    calls = []

    def failing():  # step(closure): the first ascent pass raises
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a bad batch")
        return closure_for(model, x, y)()

    with pytest.raises(RuntimeError, match="a bad batch"):
        opt.step(failing)
    assert identical(stats(model), before)


@pytest.mark.parametrize("move", list(MOVES))
def test_an_applied_update_of_a_moved_model_counts_its_batch_once(move):
    """The clean pass alone moves the statistics: as one train-mode forward at θ₀ would."""
    model, opt, x, y = moved(move)
    twin = net(bn=True).to(next(model.parameters()).dtype)
    twin.load_state_dict(model.state_dict())
    opt.step(closure_for(model, x, y))
    twin(x)
    assert identical(stats(model), stats(twin))


def test_the_snapshot_follows_the_model_the_optimizer_holds_now():
    model, other = net(bn=True), net(seed=3, bn=True)
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=model)
    opt.model = other  # e.g. a framework hands the optimizer the model it will train
    x, y = data(0)
    before = stats(other)
    with opt.clean_pass():
        other(x)
    opt.abort_update()
    assert identical(stats(other), before)


def test_the_snapshot_class_on_its_own():
    model = net(bn=True, dtype=torch.float32)
    snap = NormStatsSnapshot(model)
    model.double()
    assert len(snap) == 3  # running_mean, running_var, num_batches_tracked
    snap.save()
    before = stats(model)
    model(data(0)[0])
    assert not identical(stats(model), before)
    snap.restore()
    assert identical(stats(model), before)
    model.float()  # moved between save and restore: put back, converted
    snap.restore()
    assert identical(stats(model), [b.float() if b.is_floating_point() else b for b in before])


def test_a_snapshot_refuses_a_model_whose_norm_layers_changed():
    model = net(bn=True)
    snap = NormStatsSnapshot(model)
    snap.save()
    model[1] = torch.nn.BatchNorm1d(9, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="normalisation layers of the model changed"):
        snap.restore()


def test_flat_model_reads_the_model_when_entered():
    model = net(dtype=torch.float32)
    fm = FlatModel(model)
    model.double()
    with fm:
        assert fm.dtype == torch.float64
        assert fm.theta0.dtype == torch.float64
        loss, g = fm.loss_and_grad(lambda m: F.cross_entropy(m(data(0)[0]), data(0)[1]))
        assert g.dtype == torch.float64 and g.numel() == fm.numel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_a_model_moved_to_the_gpu_after_construction_keeps_its_statistics_on_a_skip():
    model = net(bn=True, dtype=torch.float32)
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, model=model)
    model.cuda()  # the order of accelerator.prepare(model) after building the optimizer
    x, y = (t.cuda() for t in data(0, dtype=torch.float32))
    opt.step(closure_for(model, x, y))
    before = stats(model)

    def nan_loss():
        loss = F.cross_entropy(model(x), y) * float("nan")
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    with pytest.warns(RuntimeWarning, match="update skipped"):
        opt.step(nan_loss)
    assert identical(stats(model), before)


def test_the_old_module_name_is_an_alias():
    """``xsam.policies`` (the module's former name) re-exports ``xsam.norm_stats``: the same
    objects, reachable after ``import xsam`` alone, and a pickle that names the old module
    loads as the new class."""
    import pickle
    import subprocess
    import sys

    import xsam.norm_stats
    import xsam.policies

    assert xsam.policies.__all__ == xsam.norm_stats.__all__
    for name in xsam.norm_stats.__all__:
        assert getattr(xsam.policies, name) is getattr(xsam.norm_stats, name)
    assert xsam.frozen_norm_stats is xsam.norm_stats.frozen_norm_stats
    code = (
        "import xsam; assert xsam.norm_stats.frozen_norm_stats is xsam.policies.frozen_norm_stats"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    model = net(bn=True)
    snap = NormStatsSnapshot(model)
    snap.save()
    old = pickle.dumps(snap, protocol=2)  # protocol 2 names classes as text: "module\nname"
    assert b"xsam.norm_stats\nNormStatsSnapshot" in old
    loaded = pickle.loads(old.replace(b"xsam.norm_stats\n", b"xsam.policies\n"))
    assert type(loaded) is NormStatsSnapshot and len(loaded) == len(snap)
    assert identical(loaded._copies, snap._copies)
