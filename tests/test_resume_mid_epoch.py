"""A run killed at any point resumes as itself: the config is saved when the run folder is
created, ``--resume`` with nothing saved refuses, and with ``checkpoint_every`` a run killed
mid-epoch (also inside its first epoch) resumes bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from xsam.train import TrainConfig, load_checkpoint, read_metrics, run_status, train, without_times
from xsam.train import loop as loop_mod
from xsam.train.cli import main

# 120 examples in batches of 20: 6 updates per epoch, 12 in the run
KW = dict(model="mlp", width=32, depth=1, limit_train=120, limit_test=60, batch_size=20,
          epochs=2, augment="crop2+flip+cutout8@0.5", threads=1)  # fmt: skip


class Killed(Exception):
    """Stands for SIGKILL: the run stops between two updates, nothing is tidied up."""


def _kill_at_update(monkeypatch, n):
    """Make the trainer's n-th update (1-based) raise :class:`Killed` before it runs."""
    real = loop_mod.make_update

    def make_update(*args, **kwargs):
        update, calls = real(*args, **kwargs), [0]

        def killed_at_n(x, y):
            calls[0] += 1
            if calls[0] == n:
                raise Killed
            return update(x, y)

        return killed_at_n

    monkeypatch.setattr(loop_mod, "make_update", make_update)


def _same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (s, t) in enumerate(zip(a, b)):
            _same_tensors(s, t, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize(
    "optimizer, kill_at, resumed_at",
    [
        ("xsam", 6, 4),  # killed inside the first epoch: the checkpoint after update 4
        ("xsam", 11, 8),  # inside the second epoch: update 8 = epoch 2, batch 2
        ("sgd", 6, 4),
    ],
)
def test_killed_mid_epoch_resumes_bit_identical(
    tmp_path, monkeypatch, optimizer, kill_at, resumed_at
):
    kw = dict(KW, optimizer=optimizer)
    full = train(TrainConfig(**kw, out=str(tmp_path / "full")))  # no mid-epoch checkpoints
    cfg = TrainConfig(**kw, checkpoint_every=4, out=str(tmp_path / "part"))
    with monkeypatch.context() as m:
        _kill_at_update(m, kill_at)
        with pytest.raises(Killed):
            train(cfg)
    saved = load_checkpoint(tmp_path / "part/last.pt")
    assert saved["scheduler"]["step"] == resumed_at and saved["partial_epoch"] is not None
    assert run_status(tmp_path / "part")[0] == "partial"
    lines = []
    resumed = train(cfg, resume=True, log=lines.append)
    assert lines[0].endswith(f"resuming at update {resumed_at} (epoch {resumed_at // 6 + 1}/2, "
                             f"batch {resumed_at % 6}/6)")  # fmt: skip
    assert resumed["complete"]
    assert without_times(resumed["metrics"]) == without_times(full["metrics"])
    assert without_times(read_metrics(tmp_path / "part")) == without_times(full["metrics"])
    a, b = load_checkpoint(tmp_path / "full/last.pt"), load_checkpoint(tmp_path / "part/last.pt")
    for key in ("model", "optimizer", "scaler", "loader", "scheduler", "rng"):
        _same_tensors(a[key], b[key], key)
    assert b["partial_epoch"] is None


def test_checkpoint_every_does_not_change_the_run_and_may_change_on_resume(tmp_path):
    kw = dict(KW, optimizer="sam", epochs=1)
    plain = train(TrainConfig(**kw, out=None))
    part = TrainConfig(**kw, checkpoint_every=1, out=str(tmp_path / "r"))
    every = train(part)
    assert without_times(every["metrics"]) == without_times(plain["metrics"])
    for k, v in plain["model"].state_dict().items():
        assert torch.equal(v, every["model"].state_dict()[k]), k
    again = train(part.replace(checkpoint_every=3), resume=True)  # a free key: accepted
    assert again["complete"] and again["model"] is None


def test_config_is_saved_when_the_run_folder_is_created(tmp_path, monkeypatch):
    """Killed before any checkpoint (here: while loading the data), the run folder already
    holds the run's config, and --resume runs that config, not the defaults."""
    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise Killed

    argv = ["train", "--model", "mlp", "--width", "16", "--depth", "1", "--limit-train", "60",
            "--limit-test", "30", "--batch-size", "20", "--epochs", "1", "--optimizer", "sgd",
            "--threads", "1", "--out", str(out), "--quiet"]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(loop_mod, "prepare_data", killed)
        with pytest.raises(Killed):
            main(argv)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["limit_train"], saved["epochs"], saved["width"]) == (60, 1, 16)
    assert run_status(out)[0] == "started"
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    (row,) = read_metrics(out)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["config"]["limit_train"] == 60 and ckpt["scheduler"]["step"] == 3


def test_a_start_that_failed_can_be_run_again_as_it_was(tmp_path, monkeypatch):
    """A folder holding only the config of a start that failed (no checkpoint: nothing to
    lose) takes the same run again without --resume; another config is still refused."""
    cfg = TrainConfig(**dict(KW, epochs=1, optimizer="sgd"), out=str(tmp_path / "r"))

    def missing(*args, **kwargs):
        raise loop_mod.ConfigError("no data")

    with monkeypatch.context() as m:
        m.setattr(loop_mod, "prepare_data", missing)
        with pytest.raises(loop_mod.ConfigError, match="no data"):
            train(cfg)
    assert run_status(tmp_path / "r")[0] == "started"
    with pytest.raises(loop_mod.ConfigError, match="already holds a run"):
        train(cfg.replace(lr=0.1))
    lines = []
    assert train(cfg, log=lines.append)["complete"]
    assert lines[0].endswith("no checkpoint to resume from; starting the run again")


@pytest.mark.parametrize("folder", ["absent", "empty"])
def test_resume_with_nothing_saved_refuses(tmp_path, capsys, folder):
    out = tmp_path / "run"
    if folder == "empty":
        out.mkdir()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xsam: error: --resume:") and "holds no saved run" in err
    assert "\n" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_checkpoint_every_bad_value(tmp_path, capsys, value):
    argv = ["train", "--out", str(tmp_path / "r"), "--checkpoint-every", value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xsam: error: checkpoint_every") and "\n" not in err


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_bit_identical(tmp_path):
    """The real thing: ``xsam train --checkpoint-every 2`` SIGKILLed once its first
    mid-epoch checkpoint is on disk, then ``--resume``: the same weights as a run never
    killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    flags = ["--model", "mlp", "--width", "64", "--depth", "1", "--limit-train", "2000",
             "--limit-test", "100", "--batch-size", "20", "--epochs", "2", "--optimizer", "xsam",
             "--threads", "1", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    part, full = tmp_path / "part", tmp_path / "full"
    cmd = [sys.executable, "-m", "xsam", "train", *flags]
    proc = subprocess.Popen([*cmd, "--checkpoint-every", "2", "--out", str(part)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (part / "last.pt").is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_metrics(part) == [] and run_status(part)[0] == "partial"
    subprocess.run([*cmd, "--out", str(full)], env=env, check=True)
    subprocess.run([sys.executable, "-m", "xsam", "train", "--out", str(part), "--resume",
                    "--quiet"], env=env, check=True)  # fmt: skip
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    _same_tensors(a["model"], b["model"], "model")
    _same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert without_times(read_metrics(part)) == without_times(read_metrics(full))


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux: read from /proc)."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.mark.slow
def test_sigkilled_torchrun_run_resumes_bit_identical(tmp_path):
    """Two processes: killed once the first mid-epoch checkpoint (every rank's state) is on
    disk, resumed on two processes: the same weights and metrics as a run never killed."""
    import contextlib
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    def torchrun(*args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={port}", "-m", "xsam", "train", "--model", "small_cnn",
                "--limit-train", "800", "--limit-test", "100", "--batch-size", "20",
                "--epochs", "2", "--optimizer", "xsam", "--threads", "1", "--quiet",
                "--device", "cpu", *args]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    part, full = tmp_path / "part", tmp_path / "full"
    proc = subprocess.Popen(torchrun("--checkpoint-every", "3", "--out", str(part)), env=env)
    try:
        deadline = time.monotonic() + 240
        while not (part / "last.pt").is_file() and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.05)
    finally:  # the launcher and its workers (torchrun starts them in sessions of their own)
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)
    saved = load_checkpoint(part / "last.pt")
    assert (
        not read_metrics(part) and len(saved["ranks"]) == 2 and saved["partial_epoch"] is not None
    )
    # mid-epoch the ranks differ (their own augmentation generators and batch statistics)
    a, b = saved["ranks"]
    assert not torch.equal(a["loader"]["augment_rng"], b["loader"]["augment_rng"])
    subprocess.run(torchrun("--out", str(full)), env=env, check=True, timeout=600)
    subprocess.run(torchrun("--out", str(part), "--resume"), env=env, check=True, timeout=600)
    x, y = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    _same_tensors(x["model"], y["model"], "model")
    _same_tensors(x["optimizer"], y["optimizer"], "optimizer")
    assert without_times(read_metrics(part)) == without_times(read_metrics(full))
