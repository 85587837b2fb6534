"""The trainer's updates (``xsam.train.updates``, ``xsam.train.epoch``), each on its own and in
whole runs: ``make_update`` picks the kind, a plain update is one base step and skips a
non-finite one, SAM's closure and lower-level updates agree, the epoch totals; under AMP a
diverging run skips its updates and keeps weights and state finite and ``descent_step`` is only
handed an enabled GradScaler; a skipped update or a pass that raises leaves the weights and the
running statistics as they were."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from toy_run import CPU, config, same, state_of, tiny

import xsam
from xsam.train import load_checkpoint, train
from xsam.train.epoch import EpochTotals
from xsam.train.process_group import Ranks
from xsam.train.state import RunState
from xsam.train.updates import (
    PlainUpdate,
    SAMAmpUpdate,
    SAMClosureUpdate,
    UpdateResult,
    make_autocast,
    make_update,
)


@pytest.mark.parametrize(
    "kw, kind",
    [
        (dict(optimizer="sgd"), PlainUpdate),
        (dict(optimizer="sgd", amp="bf16"), PlainUpdate),
        (dict(optimizer="sam"), SAMClosureUpdate),
        (dict(optimizer="xsam"), SAMClosureUpdate),
        (dict(optimizer="sam", amp="fp16"), SAMAmpUpdate),
        (dict(optimizer="xsam", amp="bf16"), SAMAmpUpdate),
    ],
)
def test_make_update_picks_the_kind(kw, kind):
    state, _ = state_of(config(**kw))
    assert type(make_update(state, make_autocast(state.config.amp, CPU))) is kind


def batch(state: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(state.loader))


def weights_and_state(state: RunState) -> tuple[dict, dict]:
    """Copies of the parameters and the optimizer's state_dict."""
    return copy.deepcopy((dict(state.model.named_parameters()), state.opt.state_dict()))


def test_plain_update_is_one_base_step_and_skips_non_finite():
    state, _ = state_of(config(optimizer="sgd"))
    x, y = batch(state)
    ref = copy.deepcopy(state.model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    out = ref(x)
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    ref_opt.step()
    result = make_update(state, contextlib.nullcontext)(x, y)
    assert isinstance(result, UpdateResult) and not result.skipped
    assert torch.equal(result.logits, out.detach()) and torch.equal(result.loss, loss.detach())
    assert result.stats["g0_norm"] == pytest.approx(float(norm), rel=1e-6)
    assert same(state.model.state_dict(), ref.state_dict())
    # a non-finite batch: skipped, nothing moves
    before = weights_and_state(state)
    result = make_update(state, contextlib.nullcontext)(torch.full_like(x, math.nan), y)
    assert result.skipped and math.isnan(result.stats["g0_norm"])
    assert same(weights_and_state(state), before)


@pytest.mark.parametrize("optimizer", ["sam", "xsam"])
def test_sam_closure_and_lower_level_updates_agree(optimizer):
    """Without autocast, the lower-level path (used under AMP) computes the closure path's
    update bit for bit."""
    a, _ = state_of(config(optimizer=optimizer))
    b, _ = state_of(config(optimizer=optimizer))
    x, y = batch(a)
    for s in (a, b):
        if optimizer == "xsam":
            s.opt.request_alpha_search()
    criterion = torch.nn.CrossEntropyLoss()
    ra = SAMClosureUpdate(a, criterion, contextlib.nullcontext)(x, y)
    rb = SAMAmpUpdate(b, criterion, contextlib.nullcontext)(x, y)
    assert same(a.model.state_dict(), b.model.state_dict())
    assert same(a.opt.state_dict(), b.opt.state_dict())
    assert torch.equal(ra.loss, rb.loss) and torch.equal(ra.logits, rb.logits)
    assert ra.stats == rb.stats and set(ra.stats) >= {"g0_norm", "gk_norm"}
    assert ra.alpha_searched == rb.alpha_searched == (optimizer == "xsam")
    assert not ra.skipped and not rb.skipped


def test_epoch_totals_sum_and_average_finite_statistics():
    t = EpochTotals.zeros(CPU)
    y = torch.tensor([0, 1, 2, 3])
    logits = torch.eye(4)[[0, 1, 0, 0]]  # 2 of 4 right
    t.add(UpdateResult(torch.tensor(1.0), logits, {"g0_norm": 2.0}), y)
    t.add(UpdateResult(torch.tensor(3.0), logits[:2], {"g0_norm": math.nan}, True, True), y[:2])
    t.reduce(Ranks())
    assert (float(t.loss_sum), int(t.correct), t.seen, t.searches) == (10.0, 4, 6, 1)
    assert t.mean("g0_norm") == 2.0 and t.mean("psi") is None


# -------------------------------------------- skipped and abandoned updates in whole runs
skips_warn = pytest.mark.filterwarnings("ignore:.*update skipped:RuntimeWarning")


# On a CPU, float16 convolutions run a slow reference kernel (the backward of small_cnn's takes
# ~0.2 s per image), so the fp16 cases whose contract does not involve the model use an MLP.
FP16_MLP = dict(model="mlp", width=64, depth=1)


def amp_model(amp: str) -> dict:
    return FP16_MLP if amp == "fp16" else {}


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def optimizer_tensors(ckpt: dict) -> list[torch.Tensor]:
    return [
        v for s in ckpt["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)
    ]


@skips_warn
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "xsam"])
def test_diverging_amp_run_skips_updates_and_keeps_weights_finite(tmp_path, optimizer, amp):
    """lr=1e12 makes the loss or the gradients non-finite within an epoch: those updates are
    skipped, and nothing non-finite reaches the weights or the optimizer state (bf16 used to
    hand a disabled GradScaler to descent_step, whose step() applied the NaN gradient)."""
    out = tmp_path / "run"
    result = train(tiny(optimizer=optimizer, amp=amp, lr=1e12, out=str(out), **amp_model(amp)))
    assert result["metrics"][-1]["skipped_updates"] > 0
    assert all_finite(result["model"].parameters())
    ckpt = load_checkpoint(out / "last.pt")
    assert optimizer_tensors(ckpt) and all_finite(optimizer_tensors(ckpt))
    assert all_finite(ckpt["model"][k] for k, _ in result["model"].named_parameters())


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_update_hands_descent_step_only_an_enabled_scaler(monkeypatch, amp):
    seen = []
    real = xsam.SAM.descent_step

    def spy(self, loss_fn=None, scaler=None):
        seen.append(scaler)
        return real(self, loss_fn, scaler)

    monkeypatch.setattr(xsam.SAM, "descent_step", spy)
    train(tiny(optimizer="sam", amp=amp, **amp_model(amp)))
    assert len(seen) == 4
    if amp == "bf16":
        assert all(s is None for s in seen)
    else:
        assert all(s is not None and s.is_enabled() for s in seen)


class ExplodingNet(torch.nn.Module):
    """Wraps a model; its forward pass number ``fail_at`` raises. At the pass before (the clean
    pass of the failing update) it copies the inner model's weights and statistics."""

    def __init__(self, inner: torch.nn.Module, fail_at: int) -> None:
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.before: dict[str, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at - 1:
            self.before = {k: v.clone() for k, v in self.inner.state_dict().items()}
        if self.calls == self.fail_at:
            raise RuntimeError("boom in the ascent pass")
        return self.inner(x)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_a_pass_that_raises_mid_update_leaves_weights_and_statistics(monkeypatch, amp):
    """SAM (k=1) runs two passes per update; pass 4 is the ascent pass of the second update.
    The exception propagates, and the weights and BatchNorm statistics are those from before
    that update, bit for bit, with no gradient left behind."""
    from xsam.train import state as state_mod

    built = []
    real = state_mod.build_model

    def exploding(*args, **kwargs):
        built.append(ExplodingNet(real(*args, **kwargs), fail_at=4))
        return built[-1]

    monkeypatch.setattr(state_mod, "build_model", exploding)
    # BatchNorm statistics are the point: small_cnn, with batches of 4 under fp16 (see FP16_MLP)
    small = dict(limit_train=16, limit_test=8, batch_size=4) if amp == "fp16" else {}
    with pytest.raises(RuntimeError, match="boom in the ascent pass"):
        train(tiny(optimizer="sam", amp=amp, **small))
    [net] = built
    assert net.before is not None and any(k.endswith("running_mean") for k in net.before)
    after = net.inner.state_dict()
    assert after.keys() == net.before.keys()
    for k in after:
        assert torch.equal(after[k], net.before[k]), k
    assert all(p.grad is None for p in net.parameters())


class PoisonedNet(torch.nn.Module):
    """Wraps a model; its training pass number ``at`` (counting passes with gradients, not
    XSAM's forward-only probes) gets a NaN input, so the update it belongs to is skipped."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                x = x * math.nan
        return self.inner(x)


@skips_warn
@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "xsam"])
def test_a_skipped_update_leaves_the_running_statistics(monkeypatch, optimizer, amp):
    """The clean pass of the second update sees a NaN batch: that update is skipped, and the
    statistics its pass wrote into BatchNorm are put back (the plain optimizer's path kept
    them: NaN running statistics from one bad batch, for the rest of the run)."""
    from xsam.train import state as state_mod

    real = state_mod.build_model
    at = 2 if optimizer == "sgd" else 3  # the SAM family runs two passes per update (k=1)

    def poisoned(*args, **kwargs):
        return PoisonedNet(real(*args, **kwargs), at)

    monkeypatch.setattr(state_mod, "build_model", poisoned)
    result = train(tiny(optimizer=optimizer, amp=amp))
    assert result["metrics"][-1]["skipped_updates"] == 1
    model = result["model"]
    assert all_finite(model.parameters())
    assert all_finite(b for b in model.buffers() if b.is_floating_point())


def test_a_plain_pass_that_raises_leaves_the_running_statistics(monkeypatch):
    """SGD's second pass updates BatchNorm's statistics, then raises: they are put back."""
    from xsam.train import state as state_mod

    class RaisesAfterForward(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.calls, self.before = inner, 0, None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 2:
                self.before = {k: v.clone() for k, v in self.inner.state_dict().items()}
                self.inner(x)
                raise RuntimeError("boom after the forward pass")
            return self.inner(x)

    built = []
    real = state_mod.build_model

    def raising(*args, **kwargs):
        built.append(RaisesAfterForward(real(*args, **kwargs)))
        return built[-1]

    monkeypatch.setattr(state_mod, "build_model", raising)
    with pytest.raises(RuntimeError, match="boom after the forward pass"):
        train(tiny(optimizer="sgd"))
    [net] = built
    after = net.inner.state_dict()
    assert all(torch.equal(after[k], net.before[k]) for k in after)
    assert all(p.grad is None for p in net.parameters())
