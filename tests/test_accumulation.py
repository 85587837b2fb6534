"""Gradient accumulation and ``step(closure)``. Accumulation that a framework hides is refused
loudly by ``step(closure)``, which computes every gradient itself: gradients held on entry that
differ from the clean pass's own (Lightning's ``accumulate_grad_batches``, micro-batches summed
by hand), and Accelerate's ``gradient_accumulation_steps > 1`` (its wrapper never calls
``step()`` on the micro-batches that do not sync). A refused step changes nothing. A duplicate
backward on the same batch only warns. The Hugging Face Trainer, which calls ``step()`` without
a closure, is pointed to ``SAMTrainer``. With the real frameworks, on the CPU. And the update
never accumulates across its own passes: a parameter outside the clean pass is not stepped, and
probes that run backward leave no gradient behind."""

from __future__ import annotations

import copy
import sys
import tempfile
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy import DT, closure_for, data, net

import xsam


def make(model, cls="SAM", **kw):
    extra = {"rho": 0.1, "lr": 0.1, "momentum": 0.9, "model": model}
    extra.update({"alpha_every": 1} if cls == "XSAM" else {}, **kw)
    return getattr(xsam, cls)(model.parameters(), torch.optim.SGD, **extra)


def snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def assert_unchanged(model, opt, before):
    states, sd = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[k]), k
    now = opt.state_dict()
    assert now["sam_family"] == sd["sam_family"]
    assert now["state"].keys() == sd["state"].keys()
    for key, entry in sd["state"].items():
        for name, value in entry.items():
            assert torch.equal(now["state"][key][name], value), (key, name)


# ------------------------------------------------------------------ gradients held on entry
@pytest.mark.parametrize(
    "cls, kw",
    [
        ("SAM", {}),
        ("XSAM", {}),
        ("SAM", {"rho": 0.0}),  # the one-pass path
        ("SAM", {"schedule": xsam.PerturbationSchedule(every=2, reuse=0.5)}),  # a cheap step
    ],
    ids=["sam", "xsam", "rho0", "cheap"],
)
def test_gradients_accumulated_outside_the_closure_are_refused(cls, kw):
    model = net(bn=True)
    opt = make(model, cls, **kw)
    opt.step(closure_for(model, *data(5)))  # the cheap case: the next update is a cheap step
    (x1, y1), (x2, y2) = data(0, n=8), data(1, n=8)
    F.cross_entropy(model(x1), y1).backward()  # micro-batch 1, accumulated by a framework
    before = snapshot(model, opt)
    with pytest.raises(RuntimeError, match=r"differ from the closure's own.*SAMModule"):
        opt.step(closure_for(model, x2, y2))  # the framework's step on micro-batch 2
    assert_unchanged(model, opt, before)
    assert opt.updates == 1 and opt.skipped_updates == 0 and opt.step_index == 1
    assert all(p.grad is None for p in model.parameters())
    opt.step(closure_for(model, x2, y2))  # nothing held now: steps as usual
    assert opt.updates == 2


def test_a_duplicate_backward_only_warns_and_changes_nothing_in_the_update():
    model, twin = net(), net()
    opt, ref = make(model), make(twin)
    x, y = data(0)
    F.cross_entropy(model(x), y).backward()  # the same batch, outside the closure
    with pytest.warns(RuntimeWarning, match=r"discarded the gradient '0\.weight'.*same batch"):
        opt.step(closure_for(model, x, y))
    ref.step(closure_for(twin, x, y))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(model(x), y).backward()  # twice the gradient: not the clean one, refused
    with pytest.raises(RuntimeError, match="differ from the closure's own"):
        opt.step(closure_for(model, x, y))


def test_a_refusal_is_not_silenced_by_an_earlier_warning():
    model = net()
    opt = make(model)
    x, y = data(0)
    F.cross_entropy(model(x), y).backward()
    with pytest.warns(RuntimeWarning):
        opt.step(closure_for(model, x, y))
    opt.zero_grad()
    x2, y2 = data(1)
    F.cross_entropy(model(x2), y2).backward()
    with pytest.raises(RuntimeError, match="SAMModule"):
        opt.step(closure_for(model, x, y))


def test_gradients_of_a_parameter_the_closure_does_not_reach_are_refused():
    model = net()
    opt = make(model)
    x, y = data(0)
    model[2].weight.grad = torch.ones_like(model[2].weight)  # held, but the closure gives none

    def closure():  # only the first layer gets a gradient
        loss = model[0](x).square().mean()
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"\(e\.g\. '2\.weight'\)"):
        opt.step(closure)


def test_nothing_is_held_or_compared_when_every_gradient_is_the_optimizers_own():
    model = net()
    opt = make(model)
    x, y = data(0)
    opt.step(closure_for(model, x, y))
    assert opt._check_entry_grads() == []  # d, left by the last update
    opt.zero_grad(set_to_none=False)
    assert opt._check_entry_grads() == []  # zeros: nothing is lost
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure_for(model, x, y))


# ------------------------------------------------------------------ the real frameworks
@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batches(n=4, size=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n * size, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n * size,), generator=g)
    return [(x[i : i + size], y[i : i + size]) for i in range(0, n * size, size)]


def test_accelerate_accumulation_with_the_plain_optimizer_is_refused(one_thread):
    accelerate = pytest.importorskip("accelerate")
    model = net(dtype=torch.float32)
    start = copy.deepcopy(model.state_dict())
    try:
        accelerate.state.AcceleratorState._reset_state(True)
        acc = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
        prepared, popt = acc.prepare(model, make(model))
        calls = []

        def counted(x, y):
            inner = closure_for(prepared, x, y)
            return lambda: calls.append(1) or inner()

        for i, (x, y) in enumerate(batches()):
            with acc.accumulate(prepared):
                assert acc.sync_gradients == (i % 2 == 1)
                if not acc.sync_gradients:
                    popt.step(counted(x, y))  # Accelerate does not call step(): batch lost
                    continue
                with pytest.raises(
                    RuntimeError, match=r"gradient_accumulation_steps=2.*sam_update"
                ):
                    popt.step(counted(x, y))
        assert calls == []
        assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
        assert popt.optimizer.updates == 0
        # outside accumulate() too: accelerator.backward would divide every loss by 2
        with pytest.raises(RuntimeError, match="gradient_accumulation_steps=2"):
            popt.step(closure_for(prepared, *batches()[0]))
        # the same optimizer stepped directly is not Accelerate's business
        popt.optimizer.step(closure_for(model, *batches()[0]))
        assert popt.optimizer.updates == 1

        accelerate.state.AcceleratorState._reset_state(True)
        acc = accelerate.Accelerator(cpu=True)  # gradient_accumulation_steps=1: fine
        model, twin = net(dtype=torch.float32), net(dtype=torch.float32)
        prepared, popt = acc.prepare(model, make(model))
        ref = make(twin)
        for x, y in batches():
            with acc.accumulate(prepared):
                popt.step(closure_for(prepared, x, y))
            ref.step(closure_for(twin, x, y))
        assert popt.optimizer.updates == 4
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    finally:
        accelerate.state.AcceleratorState._reset_state(True)


def test_lightning_accumulation_with_the_plain_optimizer_is_refused(one_thread):
    pl = pytest.importorskip("lightning.pytorch")

    class Plain(pl.LightningModule):  # a plain LightningModule handed an xsam optimizer
        def __init__(self):
            super().__init__()
            self.net = net(dtype=torch.float32)

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return make(self.net, "XSAM")

    def fit(accum):
        module = Plain()
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_epochs=1, accumulate_grad_batches=accum,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(batches(), batch_size=None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, loader)
        return module, [str(w.message) for w in caught]

    with pytest.raises(RuntimeError, match=r"differ from the closure's own.*SAMModule"):
        fit(2)
    module, caught = fit(1)  # no accumulation: every gradient held on entry is the last d
    assert module.trainer.optimizers[0].updates == 4
    assert not [m for m in caught if "discarded the gradient" in m]


def test_the_hf_trainer_with_the_plain_optimizer_is_pointed_to_sam_trainer(one_thread):
    transformers = pytest.importorskip("transformers")
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from test_integrations_transformers import dataset, make_model

    model = make_model()
    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, max_steps=1,
        use_cpu=True, save_strategy="no", report_to=[], disable_tqdm=True,
    )  # fmt: skip
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset()[:8], optimizers=(opt, None)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"xsam\.integrations\.transformers\.SAMTrainer"):
            trainer.train()


# --------------------------------------------- no accumulation across the update's passes
class LateParam(nn.Module):
    """``late`` is used only from the second pass of each update on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 3).to(DT)
        self.late = nn.Parameter(torch.randn(3, dtype=DT))
        self.calls = 0
        self.seen: list[list[bool]] = []

    def forward(self, x):
        self.seen.append([p.grad is None for p in self.parameters()])
        self.calls += 1
        out = self.lin(x)
        if self.calls % 100 != 1:
            out = out + self.late
        return out


@pytest.mark.parametrize("steps", [1, 3])
def test_gradients_never_accumulate_across_passes(steps):
    """A parameter without a gradient in the clean pass is outside the update: the gradients it
    picks up in ascent passes are not summed into a step (k = 3 used to step it by 3x)."""
    model = LateParam()
    opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.1, steps=steps, lr=0.5)
    x, y = data()
    late0 = model.late.detach().clone()
    model.calls = 0
    opt.step(closure_for(model, x, y))
    assert torch.equal(model.late.detach(), late0)
    assert model.late.grad is None
    assert all(all(row) for row in model.seen)  # every pass started with every grad None


def test_gradient_enabled_probes_clear_every_gradient():
    """A closure that calls backward() unconditionally makes probes run with gradients; no
    parameter may keep what they leave behind."""
    model = LateParam()
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.5, alpha_grid=[0.5, 1])

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    x, y = data()
    late0 = model.late.detach().clone()
    model.calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(closure)
    assert model.calls == 2 + 1 + 2  # 2 passes, a failed no-grad probe, 2 probes with grads
    assert torch.equal(model.late.detach(), late0) and model.late.grad is None
