"""`xsam probe` on a run folder: kept checkpoints, records, files and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from xsam.analysis import checkpoint_paths, probe_run
from xsam.train import TrainConfig, train
from xsam.train.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = TrainConfig(
        dataset="fashion-mnist-sample",
        model="small_cnn",
        optimizer="xsam",
        limit_train=100,
        limit_test=50,
        epochs=2,
        batch_size=50,
        keep_checkpoints=True,
        threads=1,
        out=str(out),
    )
    result = train(cfg)
    return out, result


def test_kept_checkpoints_hold_each_epochs_weights(run_dir):
    out, result = run_dir
    paths = checkpoint_paths(out)
    assert sorted(paths) == [1, 2]
    last = torch.load(paths[2], weights_only=True)["model"]
    for key, value in result["model"].state_dict().items():
        assert torch.equal(last[key], value), key


def test_probe_run_records_and_files(run_dir, tmp_path):
    out, _ = run_dir
    records = probe_run(
        out,
        epochs=[2],
        examples=10,
        max_steps_k=2,
        out=tmp_path,
        n_starts=1,
        ascent_iters=2,
        n_plane=8,
        alpha_grid=[0.0, 1.0, 2.0],
        sharpness=True,
    )
    assert [r["epoch"] for r in records] == [2]
    cos = records[0]["probe"]["cos"]
    assert {"g0", "g1", "g2", "xsam1", "u_star"} <= set(cos)
    assert cos["u_star"] == pytest.approx(1.0)
    assert all(-1.0 - 1e-9 <= v <= 1.0 + 1e-9 for v in cos.values())
    assert "claim1_g1_beats_g0" in records[0]["claims"]
    assert records[0]["hessian"]["iterations"] >= 1
    lines = (tmp_path / "probe.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["epoch"] == 2
    assert (tmp_path / "cosines.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["not-a-run", "no-checkpoints", "unknown-epoch", "bad-list"])
def test_probe_bad_input_exits_2(case, run_dir, tmp_path, capsys):
    out, _ = run_dir
    if case == "not-a-run":
        argv = ["probe", str(tmp_path)]
    elif case == "no-checkpoints":
        (tmp_path / "config.json").write_text((out / "config.json").read_text())
        argv = ["probe", str(tmp_path)]
    elif case == "unknown-epoch":
        argv = ["probe", str(out), "--epochs", "7"]
    else:
        argv = ["probe", str(out), "--epochs", "one"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xsam: error:") and "\n" not in err


def test_probe_reports_progress_and_keeps_finished_checkpoints(run_dir, tmp_path, monkeypatch):
    """Each checkpoint's record is written as soon as it is probed: a probe stopped at the
    second checkpoint keeps the first."""
    import xsam.analysis.runs as runs_mod

    out, _ = run_dir
    real, calls, lines = runs_mod.probe_directions, [], []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runs_mod, "probe_directions", second_fails)
    kw = dict(examples=10, max_steps_k=1, n_starts=1, ascent_iters=1, n_plane=4)
    with pytest.raises(KeyboardInterrupt):
        probe_run(out, out=tmp_path, log=lines.append, alpha_grid=[0.0, 1.0], **kw)
    assert lines[0] == "probing epoch 1 (1/2) ..." and lines[-1] == "probing epoch 2 (2/2) ..."
    kept = [json.loads(s) for s in (tmp_path / "probe.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in kept] == [1]
