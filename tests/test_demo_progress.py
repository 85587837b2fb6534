"""`xsam demo`: per-epoch progress from runs in worker processes, and one thread per run
unless asked otherwise (the thread count changes the floating-point sums, so the numbers)."""

from __future__ import annotations

import threading

import pytest

from xsam.train.checkpoint import write_metrics
from xsam.train.demo import demo_plan
from xsam.train.progress import epoch_summary, watch_epochs


def _row(epoch: int, acc: float, memo: float | None = 0.25, alpha: float | None = None) -> dict:
    return {"epoch": epoch, "test_acc": acc, "memorized": memo, "alpha": alpha,
            "epoch_time_s": 1.5, "eval_time_s": 0.25}  # fmt: skip


def test_epoch_summary_line():
    assert epoch_summary(_row(3, 0.8125, 0.1, 1.2), 20) == (
        "epoch  3/20  test acc 81.25%  memorised 10.0% of the wrong labels  α 1.20  (1.8 s)"
    )
    assert epoch_summary(_row(12, 0.5, None), 12) == "epoch 12/12  test acc 50.00%  (1.8 s)"


def test_watch_epochs_reports_each_new_epoch_once_in_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_metrics(a, [_row(1, 0.5)])  # finished before the watch: not reported again
    lines, got_two = [], threading.Event()

    def say(s: str) -> None:
        lines.append(s)
        if len(lines) == 2:
            got_two.set()

    with watch_epochs([("A", a, 3), ("B", b, 2)], say, interval=0.01) as poll:
        write_metrics(a, [_row(1, 0.5), _row(2, 0.625)])
        write_metrics(b, [_row(1, 0.75)])
        assert got_two.wait(10)  # the watcher thread found both
        write_metrics(b, [_row(1, 0.75), _row(2, 0.875)])
        poll()  # what a caller does before a line of its own
        assert lines[-1] == "  B: " + epoch_summary(_row(2, 0.875), 2)
        write_metrics(a, [_row(1, 0.5), _row(2, 0.625), _row(3, 0.25)])
    # the last epoch is reported when the watch ends; nothing twice
    assert sorted(lines[:2]) == sorted(
        ["  A: " + epoch_summary(_row(2, 0.625), 3), "  B: " + epoch_summary(_row(1, 0.75), 2)]
    )
    assert lines[2:] == [
        "  B: " + epoch_summary(_row(2, 0.875), 2),
        "  A: " + epoch_summary(_row(3, 0.25), 3),
    ]


def test_watch_epochs_follows_a_run_that_starts_over(tmp_path):
    write_metrics(tmp_path, [_row(1, 0.5), _row(2, 0.5)])
    lines = []
    with watch_epochs([("A", tmp_path, 2)], lines.append, interval=60) as poll:
        write_metrics(tmp_path, [_row(1, 0.25)])  # --force: the run's files went, epoch 1 again
        poll()
    assert lines == ["  A: " + epoch_summary(_row(1, 0.25), 2)]


def test_demo_runs_one_thread_each_unless_told(tmp_path):
    base, variants, seeds, out = demo_plan(tmp_path / "d")
    assert base.validated().threads == 1 and seeds == [0] and out == tmp_path / "d"
    assert demo_plan(tmp_path / "d", threads="3")[0].validated().threads == 3


@pytest.mark.slow
def test_demo_prints_every_runs_epochs_before_its_done_line(tmp_path, capsys):
    from xsam.train.cli import main

    assert main(["demo", "--epochs", "2", "--out", str(tmp_path / "d"), "--jobs", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    dones = []
    for label in ("sgd", "sam:rho=0.2", "xsam:rho=0.1"):
        epochs = [i for i, s in enumerate(lines) if s.startswith(f"  {label} seed 0: epoch ")]
        (done,) = [i for i, s in enumerate(lines) if f"{label} seed 0: done (2 epochs" in s]
        assert len(epochs) == 2 and max(epochs) < done, (label, lines)
        dones.append(done)
    table = [i for i, s in enumerate(lines) if s.startswith("| optimizer | runs |")]
    assert table and table[0] > max(dones)


@pytest.mark.slow
def test_parallel_compare_prints_the_epochs_of_its_workers(tmp_path, capsys):
    from xsam.train.cli import main

    argv = ["compare", "--optimizers", "sgd,sam", "--seeds", "0", "--model", "mlp", "--width",
            "16", "--depth", "1", "--limit-train", "100", "--limit-test", "50", "--batch-size",
            "50", "--epochs", "2", "--jobs", "2", "--out", str(tmp_path / "c")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for label in ("sgd", "sam"):
        for e in (1, 2):
            assert f"  {label} seed 0: epoch  {e}/2  test acc " in out, (label, e, out)
