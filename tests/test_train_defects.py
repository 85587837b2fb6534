"""Trainer defects, one test (or a few) each: skipped or abandoned updates that changed state,
run folders whose leftovers were read as the new run's, options refused for optimizers that
never use them, and resumes that accepted what they should refuse."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import xsam
from xsam.train import ConfigError, TrainConfig, load_checkpoint, train, without_times
from xsam.train.config import unused_fields

# 256 training and 128 test images of the embedded sample, batch 64: 4 updates per epoch.
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, threads=1)
skips_warn = pytest.mark.filterwarnings("ignore:.*update skipped:RuntimeWarning")


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


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


# ---------------------------------------------------------------------- a. AMP skips
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


# ---------------------------------------------------------------------- b. abandoned updates
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


# ---------------------------------------------------------------------- c. leftovers of an earlier run
def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


RUN_NAMES = ["config.json", "last.pt", "metrics.csv", "metrics.jsonl", "run.json"]


def test_force_deletes_the_earlier_runs_kept_checkpoints_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    train(tiny(optimizer="sgd", epochs=2, keep_checkpoints=True, out=str(out)))
    assert names(out / "checkpoints") == ["epoch001.pt", "epoch002.pt"]
    (out / "notes.txt").write_text("mine")
    train(tiny(optimizer="sgd", lr=0.1, out=str(out)), force=True)
    assert names(out) == sorted([*RUN_NAMES, "notes.txt"])  # no checkpoints/ any more
    assert (out / "notes.txt").read_text() == "mine"
    # a folder of kept weights that also holds the user's files: only the weights go
    train(tiny(optimizer="sgd", epochs=2, keep_checkpoints=True, out=str(out)), force=True)
    (out / "checkpoints" / "README").write_text("mine too")
    result = train(tiny(optimizer="sgd", keep_checkpoints=True, out=str(out)), force=True)
    assert names(out / "checkpoints") == ["README", "epoch001.pt"]
    kept = load_checkpoint(out / "checkpoints" / "epoch001.pt")["model"]
    assert all(torch.equal(kept[k], v) for k, v in result["model"].state_dict().items())


def test_a_restarted_run_leaves_no_kept_checkpoint_of_the_first_attempt(tmp_path):
    """A run folder with a config but no finished epoch (here: the checkpoint and metrics
    were lost) starts over on --resume; the first attempt's kept weights go."""
    out = tmp_path / "run"
    config = tiny(optimizer="sgd", epochs=2, keep_checkpoints=True, out=str(out))
    train(config)
    (out / "last.pt").unlink()
    (out / "metrics.jsonl").write_text("")
    result = train(config, resume=True, stop_after=1)
    assert result["resumed_from"] is None and result["epochs_done"] == 1
    assert names(out / "checkpoints") == ["epoch001.pt"]


def test_clear_run_files_deletes_the_runs_files_only(tmp_path):
    from xsam.train.checkpoint import clear_run_files

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ours = [*RUN_NAMES, ".last.pt.123.tmp", ".metrics.csv.7.tmp", ".write-test.9"]
    ours_kept = ["epoch001.pt", "epoch120.pt", ".epoch003.pt.5.tmp"]
    theirs = ["notes.txt", ".hidden", "last.pt.bak", ".notes.txt.1.tmp", "probe"]
    theirs_kept = ["mine.pt", "epoch001.pt.bak"]
    for name in ours + theirs:
        (run / name).write_text("x")
    for name in ours_kept + theirs_kept:
        (run / "checkpoints" / name).write_text("x")
    clear_run_files(run)
    assert names(run) == sorted([*theirs, "checkpoints"])
    assert names(run / "checkpoints") == sorted(theirs_kept)


# ---------------------------------------------------------------------- d. settings not used
@pytest.mark.parametrize(
    "kw",
    [
        dict(optimizer="sgd", rho_max=0.0),
        dict(optimizer="sgd", rho=-1.0),
        dict(optimizer="sgd", steps=0),
        dict(optimizer="sgd", eta=-1.0),
        dict(optimizer="sgd", alpha_every=0),
        dict(optimizer="sgd", alpha_grid=[]),
        dict(optimizer="sam", rho_max=0.0),
        dict(optimizer="sam", alpha_every=0),
        dict(optimizer="sam", alpha_grid=""),
        dict(base="adamw", momentum=1.0),
        dict(base="adamw", nesterov=True, momentum=0.0),
    ],
)
def test_a_setting_the_optimizer_does_not_use_is_accepted(kw):
    c = TrainConfig(**kw).validated()
    assert set(kw) - {"optimizer", "base"} <= set(unused_fields(c))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(optimizer="xsam", rho_max=0.0), "rho_max should be > 0"),
        (dict(optimizer="sam", rho=-1.0), "rho should be >= 0"),
        (dict(optimizer="sam", steps=0), "steps should be >= 1"),
        (dict(optimizer="sam", eta=-1.0), "eta should be >= 0"),
        (dict(optimizer="xsam", alpha_every=0), "alpha_every should be >= 1"),
        (dict(optimizer="xsam", alpha_grid=[]), "alpha_grid should be a non-empty list"),
        (dict(base="sgd", momentum=1.0), "momentum should be in [0, 1)"),
        (dict(base="sgd", nesterov=True, momentum=0.0), "nesterov needs momentum > 0"),
        # an unused setting still has to be a value of its kind
        (dict(optimizer="sgd", rho="fast"), "rho should be a number"),
        (dict(optimizer="sgd", rho_max=math.inf), "rho_max should be a finite number"),
        (dict(optimizer="sgd", steps=1.5), "steps should be an integer"),
        (dict(optimizer="sgd", perturbation="ring"), "unknown perturbation 'ring'"),
        (dict(optimizer="sgd", adaptive="yes"), "adaptive should be true or false"),
        (dict(optimizer="sam", alpha_grid="0:1:-1"), "alpha_grid should be 'start:stop:step'"),
    ],
)
def test_a_setting_the_optimizer_uses_is_range_checked(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**kw).validated()


def test_unused_settings_do_not_change_the_run():
    ignored = dict(rho=-1.0, rho_max=0.0, steps=0, eta=-1.0, alpha_every=0, alpha_grid=[])
    a = train(tiny(optimizer="sgd"))
    b = train(tiny(optimizer="sgd", **ignored))
    assert without_times(a["metrics"]) == without_times(b["metrics"])
    a = train(tiny(optimizer="sam", base="adamw", lr=1e-3))
    b = train(tiny(optimizer="sam", base="adamw", lr=1e-3, rho_max=0.0, alpha_every=0,
                   momentum=1.0, nesterov=True))  # fmt: skip
    assert without_times(a["metrics"]) == without_times(b["metrics"])


# ---------------------------------------------------------------------- e. the same, elsewhere
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


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    """A last.pt copied in from another run, or a config.json edited after the run started,
    used to be resumed silently: the weights of one run continued under another's config."""
    a, b = tmp_path / "a", tmp_path / "b"
    config = tiny(optimizer="sgd", epochs=2, out=str(a))
    train(config, stop_after=1)
    train(config.replace(lr=0.1, out=str(b)), stop_after=1)
    saved = (a / "last.pt").read_bytes()
    (a / "last.pt").write_bytes((b / "last.pt").read_bytes())
    with pytest.raises(ConfigError, match=r"last.pt was written by a run with another config"):
        train(config, resume=True)
    with pytest.raises(ConfigError, match=r"lr: 0.1 -> 0.05"):
        train(config, resume=True)
    (a / "last.pt").write_bytes(saved)
    # config.json edited to run longer: the checkpoint (and its schedule) says otherwise
    edited = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**edited, "epochs": 3}))
    with pytest.raises(ConfigError, match=r"another config \(epochs: 2 -> 3\)"):
        train(config.replace(epochs=3), resume=True)
    (a / "config.json").write_text(json.dumps(edited))
    assert train(config, resume=True)["resumed_from"] == 1  # the run itself resumes


def test_compare_never_shows_an_earlier_comparisons_results(tmp_path, monkeypatch):
    """alpha.png of an earlier comparison with XSAM stayed next to a new comparison without
    it, and an interrupted comparison left the earlier results.md as if they were its own."""
    from xsam.train import compare as cmp

    out = tmp_path / "cmp"
    out.mkdir()
    for name in ("results.md", "results.json", "test_acc.png", "alpha.png"):
        (out / name).write_text("an earlier comparison's")
    base = tiny(optimizer="sgd", limit_train=128, limit_test=64)
    variants = cmp.parse_variants(["sgd"])
    real = cmp.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cmp, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cmp.run_compare(base, variants, [0], out)
    assert names(out) == ["compare.json"]
    monkeypatch.setattr(cmp, "train", real)
    result = cmp.run_compare(base, variants, [0], out)
    assert names(out) == ["compare.json", "results.json", "results.md", "sgd-seed0", "test_acc.png"]
    assert [Path(f).name for f in result["files"]] == ["results.md", "results.json", "test_acc.png"]


def test_resume_refuses_another_number_of_processes(tmp_path):
    """A run started under torchrun with 2 processes and resumed with 1 (or the other way)
    continued silently with other data shards."""
    from xsam.train.checkpoint import atomic_save, load_checkpoint

    out = tmp_path / "run"
    config = tiny(optimizer="sgd", epochs=2, out=str(out))
    train(config, stop_after=1)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["processes"] == 1
    atomic_save({**ckpt, "processes": 2}, out / "last.pt")
    with pytest.raises(ConfigError, match=r"ran on 2 process\(es\), this run on 1"):
        train(config, resume=True)
    atomic_save(ckpt, out / "last.pt")
    assert train(config, resume=True)["resumed_from"] == 1
