"""Trainer defects, one test (or a few) each: skipped or abandoned updates that changed state,
run folders whose leftovers were read as the new run's, options refused for optimizers that
never use them, and resumes that accepted what they should refuse."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from xsam.train import ConfigError, TrainConfig, load_checkpoint, train, without_times
from xsam.train.config import unused_fields

# 256 training and 128 test images of the embedded sample, batch 64: 4 updates per epoch.
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, threads=1)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


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
