"""Run folders (``xsam.train.checkpoint``): a run started again with ``force`` or after a failed
start deletes the earlier run's kept checkpoints and nothing else, ``clear_run_files`` deletes
the run's own files only, and a comparison never shows an earlier comparison's results or
plots (nor leaves them behind when it is interrupted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_run import tiny

from xsam.train import load_checkpoint, train


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
