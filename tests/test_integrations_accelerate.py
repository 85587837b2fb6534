"""Accelerate through xsam.integrations.accelerate.sam_update, with the real framework: the
weights after a few steps equal those of the same updates by hand through opt.step(closure),
with precision "no" and "bf16", with and without accumulation, SAM and XSAM (α searched, probes
forward-only), with max_grad_norm; every batch is forwarded in every pass; the combination
that silently skips batches (gradient_accumulation_steps > 1) is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xsam

accelerate = pytest.importorskip("accelerate", reason="install torch-xsam[accelerate]")
from xsam.integrations.accelerate import sam_update  # noqa: E402

N_BATCHES, BATCH = 8, 4
GRID = (0.0, 0.5, 1.0, 1.5, 2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than two contending ones, and the
    numbers compared are computed in the same process either way. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_BATCHES * BATCH, 6, generator=g)
    y = torch.randint(0, 3, (N_BATCHES * BATCH,), generator=g)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def make(kind, schedule=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    if kind == "sam":
        opt = xsam.SAM(
            net.parameters(),
            torch.optim.SGD,
            rho=0.1,
            model=net,
            lr=0.1,
            momentum=0.9,
            schedule=schedule,
        )
    else:
        opt = xsam.XSAM(
            net.parameters(), torch.optim.SGD, rho=0.1, alpha="auto", alpha_every=2,
            alpha_grid=GRID, model=net, lr=0.1, momentum=0.9, schedule=schedule,
        )  # fmt: skip
    return net, opt


def accelerator(precision="no", accum=1):
    accelerate.state.AcceleratorState._reset_state(True)  # a fresh Accelerator per test
    return accelerate.Accelerator(
        cpu=True, mixed_precision=precision, gradient_accumulation_steps=accum
    )


def train(kind, precision, accum, max_grad_norm=None, schedule=None):
    acc = accelerator(precision)
    net, opt = make(kind, schedule)
    model, popt = acc.prepare(net, opt)
    calls = {"grad": 0, "no_grad": 0}

    def loss_fn(batch):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        x, y = batch
        return F.cross_entropy(model(x), y)

    batches, clean = data(), []
    for start in range(0, N_BATCHES, accum):
        window = batches[start : start + accum]
        clean.append(
            sam_update(acc, popt, window, loss_fn, model=model, max_grad_norm=max_grad_norm)
        )
    return net, opt, calls, clean


def reference(kind, accum, bf16=False, max_grad_norm=None, schedule=None):
    net, opt = make(kind, schedule)
    batches, clean = data(), []
    for start in range(0, N_BATCHES, accum):
        window = batches[start : start + accum]
        calls = []
        passes = opt.steps + 1 if opt.perturb_due else 1  # a cheap step of a schedule: one

        def closure(window=window, calls=calls, passes=passes):
            total = 0.0
            for x, y in window:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(net(x), y)
                loss = loss / len(window)
                if torch.is_grad_enabled():
                    loss.backward()
                total = total + loss.detach()
            if torch.is_grad_enabled():
                calls.append(1)
                if max_grad_norm and len(calls) == passes:  # g_k, hence d
                    torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm)
            return total

        clean.append(opt.step(closure))
    return net, opt, clean


def assert_same(net, ref, atol=1e-6):
    got, want = net.state_dict(), ref.state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("kind", ["sam", "xsam"])
@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_sam_update_equals_closure_reference(kind, accum, precision):
    net, opt, calls, clean = train(kind, precision, accum)
    ref, ref_opt, ref_clean = reference(kind, accum, bf16=precision == "bf16")
    assert_same(net, ref)
    updates = N_BATCHES // accum
    assert opt.updates == ref_opt.updates == updates
    torch.testing.assert_close(torch.stack(clean), torch.stack(ref_clean), atol=1e-6, rtol=0)
    assert calls["grad"] == 2 * N_BATCHES  # every batch forwarded in the clean and ascent pass
    searches = (updates + 1) // 2 if kind == "xsam" else 0
    assert calls["no_grad"] == searches * len(GRID) * accum


def test_sam_update_max_grad_norm_clips_d():
    net, _, _, _ = train("xsam", "no", 2, max_grad_norm=0.05)
    ref, _, _ = reference("xsam", 2, max_grad_norm=0.05)
    free, _, _ = reference("xsam", 2)
    assert_same(net, ref)
    assert max((a - b).abs().max() for a, b in zip(ref.parameters(), free.parameters())) > 1e-3


def test_sam_update_follows_the_perturbation_schedule():
    """A schedule with cheap steps (one pass, the clean gradient) between full updates: the
    same steps as opt.step(closure), clipping included (on a cheap step it clips the clean
    gradient, the one applied)."""
    schedule = xsam.PerturbationSchedule(every=2)
    net, opt, calls, _ = train("xsam", "no", 2, max_grad_norm=0.05, schedule=schedule)
    ref, ref_opt, _ = reference("xsam", 2, max_grad_norm=0.05, schedule=schedule)
    assert_same(net, ref)
    assert opt.cheap_updates == ref_opt.cheap_updates == 2
    assert calls["grad"] == 2 * 4 + 1 * 4  # full updates: two passes; cheap steps: one


def test_sam_update_refuses_what_would_skip_batches():
    acc = accelerator(accum=2)
    net, opt = make("xsam")
    model, popt = acc.prepare(net, opt)
    batch = data()[0]
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2"):
        sam_update(acc, popt, [batch], lambda b: F.cross_entropy(model(b[0]), b[1]))
    acc = accelerator()
    with pytest.raises(TypeError, match="SAM-family optimizer"):
        sam_update(acc, torch.optim.SGD(net.parameters(), lr=0.1), [batch], lambda b: b)
    with pytest.raises(ValueError, match="batches is empty"):
        sam_update(acc, opt, [], lambda b: b)
