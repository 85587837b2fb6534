"""Trainer defects, one test (or a few) each: skipped or abandoned updates that changed state,
run folders whose leftovers were read as the new run's, options refused for optimizers that
never use them, and resumes that accepted what they should refuse."""

from __future__ import annotations

import pytest
import torch

import xsam
from xsam.train import TrainConfig, load_checkpoint, train

# 256 training and 128 test images of the embedded sample, batch 64: 4 updates per epoch.
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, threads=1)
skips_warn = pytest.mark.filterwarnings("ignore:.*update skipped:RuntimeWarning")


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def optimizer_tensors(ckpt: dict) -> list[torch.Tensor]:
    return [
        v for s in ckpt["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)
    ]


# ---------------------------------------------------------------------- a. AMP skips
@skips_warn
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["sgd", "sam", "xsam"])
def test_diverging_amp_run_skips_updates_and_keeps_weights_finite(tmp_path, optimizer, amp):
    """lr=1e12 makes the loss or the gradients non-finite within an epoch: those updates are
    skipped, and nothing non-finite reaches the weights or the optimizer state (bf16 used to
    hand a disabled GradScaler to descent_step, whose step() applied the NaN gradient)."""
    out = tmp_path / "run"
    result = train(tiny(optimizer=optimizer, amp=amp, lr=1e12, out=str(out)))
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
    train(tiny(optimizer="sam", amp=amp))
    assert len(seen) == 4
    if amp == "bf16":
        assert all(s is None for s in seen)
    else:
        assert all(s is not None and s.is_enabled() for s in seen)
