"""Lightning through xsam.integrations.lightning.SAMModule, with the real framework: the weights
after a few steps equal those of the same updates driven by hand through opt.step(closure), for
32-true and bf16-mixed, with and without accumulate_grad_batches, SAM and XSAM (α searched, so
probes run), with gradient clipping, and fp16 with a GradScaler on the CPU."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xsam

pl = pytest.importorskip("lightning.pytorch", reason="install torch-xsam[lightning]")
from xsam.integrations.lightning import SAMModule  # noqa: E402

N_BATCHES, BATCH = 8, 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than two contending ones, and the
    numbers compared are computed in the same process either way. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_BATCHES * BATCH, 6, generator=g)
    y = torch.randint(0, 3, (N_BATCHES * BATCH,), generator=g)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


SCHEDULE = None  # set by the schedule test: a perturbation schedule for every optimizer made


def make_opt(kind: str, net: nn.Module, model: nn.Module) -> xsam.SAMFamily:
    if SCHEDULE is not None:
        return xsam.XSAM(net.parameters(), torch.optim.SGD, rho=0.1, alpha="auto", model=model,
                         alpha_grid=(0.0, 1.0, 2.0), schedule=SCHEDULE, lr=0.1)  # fmt: skip
    if kind == "sam":
        return xsam.SAM(
            net.parameters(), torch.optim.SGD, rho=0.1, model=model, lr=0.1, momentum=0.9
        )
    return xsam.XSAM(
        net.parameters(), torch.optim.SGD, rho=0.1, alpha="auto", alpha_every=2, model=model,
        alpha_grid=(0.0, 0.5, 1.0, 1.5, 2.0), lr=0.1, momentum=0.9,
    )  # fmt: skip


class Counted(SAMModule):
    """The user's module, instrumented: counts backward passes and forward-only calls."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net, self.kind = make_net(), kind
        self.clean: list[torch.Tensor] = []
        self.no_grad_calls = 0
        self.backwards = 0
        self.net[0].weight.register_hook(self._count)

    def _count(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def sam_loss(self, batch, batch_idx):
        x, y = batch
        if not torch.is_grad_enabled():
            self.no_grad_calls += 1
        return F.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.clean.append(loss.detach().float())
        return loss

    def configure_optimizers(self):
        self.opt = make_opt(self.kind, self.net, self.net)
        return self.opt


def fit(kind: str, precision: str | None, accum: int, **trainer_kwargs) -> Counted:
    module = Counted(kind)
    loader = torch.utils.data.DataLoader(data(), batch_size=None, shuffle=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, accumulate_grad_batches=accum,
        precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
        trainer.fit(module, loader)
    module.trainer_ = trainer
    return module


def reference(kind: str, accum: int, dtype=None, clip=None, scaler=None):
    """The same updates by hand: opt.step(closure), every micro-batch in every pass. ``clip``:
    (value, "norm" | "value") applied to the last pass's gradient g_k, which is d for SAM and
    d up to rounding for XSAM under norm clipping (‖d‖ = ‖g_k‖, d ∝ ‖g_k‖)."""
    net = make_net()
    opt = make_opt(kind, net, net)
    batches, clean = data(), []
    for start in range(0, len(batches), accum):
        window = batches[start : start + accum]
        calls = []
        passes = opt.steps + 1 if opt.perturb_due else 1  # a schedule's cheap step: one pass

        def closure(window=window, calls=calls, passes=passes):
            total = 0.0
            for x, y in window:
                with torch.autocast(
                    "cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None
                ):
                    loss = F.cross_entropy(net(x), y)
                if not calls:
                    clean.append(loss.detach().float())
                loss = loss / accum
                if torch.is_grad_enabled():
                    loss.backward()
                total = total + loss
            if torch.is_grad_enabled():
                calls.append(1)
                if clip is not None and len(calls) == passes:
                    if clip[1] == "norm":
                        torch.nn.utils.clip_grad_norm_(net.parameters(), clip[0])
                    else:
                        torch.nn.utils.clip_grad_value_(net.parameters(), clip[0])
            return total

        opt.step(closure)
    return net, opt, clean


def assert_same(module: Counted, ref_net: nn.Module, atol: float) -> None:
    got, want = module.net.state_dict(), ref_net.state_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0, msg=key)


CASES = [
    (kind, precision, accum)
    for kind in ("sam", "xsam")
    for precision in ("32-true", "bf16-mixed")
    for accum in (1, 2)
]


@pytest.mark.parametrize("kind,precision,accum", CASES)
def test_lightning_equals_closure_reference(kind, precision, accum):
    module = fit(kind, precision, accum)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    ref_net, ref_opt, clean = reference(kind, accum, dtype)
    # bf16: the same autocast ops in the same order; 1e-6 holds there too (the fp32 master
    # weights and the optimizer arithmetic are identical, only the bf16 matmuls round)
    assert_same(module, ref_net, atol=1e-6)
    updates = N_BATCHES // accum
    assert module.opt.updates == ref_opt.updates == updates
    # the loss returned and logged is the clean loss of each micro-batch
    torch.testing.assert_close(torch.stack(module.clean), torch.stack(clean), atol=1e-6, rtol=0)
    logged = module.trainer_.callback_metrics["train_loss_step"]
    torch.testing.assert_close(logged.float(), clean[-1], atol=1e-6, rtol=0)
    # clean pass + one ascent pass per micro-batch, nothing else runs backward
    assert module.backwards == 2 * N_BATCHES
    if kind == "xsam":  # searched at updates 1, 3, ...: one probe per α and micro-batch
        searches = (updates + 1) // 2
        assert module.no_grad_calls == searches * len(module.opt.alpha_grid) * accum
        assert module.opt.last_probe_losses is not None
    else:
        assert module.no_grad_calls == 0


@pytest.mark.parametrize(
    "kind,algorithm,value",
    [
        ("xsam", "norm", 0.05),
        ("sam", "value", 0.01),
        ("sam", "norm", 0.05),
    ],
)
def test_lightning_gradient_clipping_acts_on_d(kind, algorithm, value):
    module = fit(kind, "32-true", 2, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
    ref_net, _, _ = reference(kind, 2, clip=(value, algorithm))
    unclipped, _, _ = reference(kind, 2)
    assert_same(module, ref_net, atol=1e-6)
    diff = max((a - b).abs().max() for a, b in zip(ref_net.parameters(), unclipped.parameters()))
    assert diff > 1e-3  # the clipping was active


def test_lightning_follows_the_perturbation_schedule(monkeypatch):
    """Cheap steps (the clean gradient alone, clipped likewise) between full updates."""
    monkeypatch.setattr(sys.modules[__name__], "SCHEDULE", xsam.PerturbationSchedule(every=2))
    module = fit("xsam", "32-true", 2, gradient_clip_val=0.05)
    ref_net, ref_opt, _ = reference("xsam", 2, clip=(0.05, "norm"))
    assert_same(module, ref_net, atol=1e-6)
    assert module.opt.cheap_updates == ref_opt.cheap_updates == 2
    assert module.backwards == 2 * 4 + 1 * 4  # full updates: two passes; cheap steps: one


def test_lightning_fp16_gradscaler_on_cpu():
    """The 16-mixed code path (Lightning's GradScaler scales every pass), run on the CPU through
    Lightning's MixedPrecision plugin with a CPU GradScaler. Reference: the lower-level API with
    the same scaler settings."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision(
        "16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8)
    )
    module = fit("xsam", None, 2, plugins=[plugin])
    net = make_net()
    opt = make_opt("xsam", net, net)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    batches = data()
    for start in range(0, len(batches), 2):
        window = batches[start : start + 2]

        def loss(x, y):
            with torch.autocast("cpu", dtype=torch.float16):
                return F.cross_entropy(net(x), y) / 2

        def probe(window=window):
            total = 0.0
            for x, y in window:
                total = total + loss(x, y)
            return total

        opt.zero_grad()
        with opt.clean_pass():
            for x, y in window:
                scaler.scale(loss(x, y)).backward()
        opt.ascent_step()
        with opt.perturbed_pass():
            for x, y in window:
                scaler.scale(loss(x, y)).backward()
        opt.descent_step(loss_fn=probe, scaler=scaler)
        scaler.update()
    assert_same(module, net, atol=1e-6)
    assert module.opt.updates == opt.updates == N_BATCHES // 2
    assert plugin.scaler.get_scale() == scaler.get_scale()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="16-mixed needs CUDA in Lightning")
def test_lightning_16_mixed_cuda_runs():
    module = Counted("xsam")
    loader = torch.utils.data.DataLoader(data(), batch_size=None)
    trainer = pl.Trainer(accelerator="cuda", devices=1, max_epochs=1, precision="16-mixed",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(module, loader)
    assert module.opt.updates + module.opt.skipped_updates == N_BATCHES


def test_lightning_refuses_other_optimizers_and_manual_optimization():
    class Plain(Counted):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="SAM-family optimizer"):
        module = Plain("sam")
        trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
        trainer.fit(module, torch.utils.data.DataLoader(data(), batch_size=None))

    class Manual(Counted):
        def __init__(self, kind):
            super().__init__(kind)
            self.automatic_optimization = False

    with pytest.raises(RuntimeError, match="automatic optimization"):
        trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
        trainer.fit(Manual("sam"), torch.utils.data.DataLoader(data(), batch_size=None))
