"""``xsam compare --jobs N``: runs in separate processes give the sequential results, resume
stopped runs, and a failed run neither hides the others nor goes unreported.

Each parallel comparison here starts two worker processes (each imports torch): the grids are
kept to two runs to train."""

from __future__ import annotations

import json

from xsam.__main__ import main
from xsam.train import ConfigError, TrainConfig, read_metrics, train, without_times
from xsam.train import compare as cmp

# 150 training, 100 validation and 100 test images, batch 50: 3 updates per epoch.
BASE = TrainConfig(
    model="mlp",
    width=16,
    depth=1,
    limit_train=150,
    limit_test=100,
    val_size=100,
    batch_size=50,
    epochs=2,
    threads=1,
)
VARIANTS = ["sgd", "xsam:rho=0.05"]
FLAGS = ["--model", "mlp", "--width", "16", "--depth", "1", "--limit-train", "150"]
FLAGS += ["--limit-test", "100", "--val-size", "100", "--batch-size", "50", "--epochs", "2"]
FLAGS += ["--threads", "1"]


def _metrics(folder):
    return without_times(read_metrics(folder))


def _no_times(table: str) -> list[str]:
    return [line.rsplit("|", 2)[0] for line in table.splitlines()]  # without the time column


def test_parallel_gives_the_sequential_results(tmp_path):
    variants = cmp.parse_variants(VARIANTS)
    seq = cmp.run_compare(BASE, variants, [0], tmp_path / "seq", plots=False)
    lines = []
    out = tmp_path / "par"
    par = cmp.run_compare(BASE, variants, [0], out, plots=False, jobs=2, log=lines.append)
    for name in ("sgd-seed0", "xsam_rho0.05-seed0"):
        assert _metrics(out / name) == _metrics(tmp_path / "seq" / name), name
    assert _no_times(par["table"]) == _no_times(seq["table"])
    assert [r["final_val_acc"] for r in par["rows"]] == [r["final_val_acc"] for r in seq["rows"]]
    assert par["pairs"] == seq["pairs"] and par["failed"] == []
    # one line per run start and finish, each prefixed with its run
    assert len(lines) == 4
    for head in ("[1/2] sgd seed 0: ", "[2/2] xsam:rho=0.05 seed 0: "):
        assert sum(line.startswith(head + "training (1 thread) -> ") for line in lines) == 1
        assert sum(line.startswith(head + "done (2 epochs, ") for line in lines) == 1
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["pairs"][0]["label_a"] == "sgd" and numbers["pairs"][0]["n"] == 1
    assert numbers["failed"] == []


def test_parallel_resumes_and_reports_a_failed_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    plan = cmp.plan_runs(BASE, cmp.parse_variants(VARIANTS), [0, 1], out)
    train(plan[0].config)  # complete: skipped
    train(plan[1].config, stop_after=1)  # stopped: resumed by a worker
    train(plan[2].config, stop_after=1)
    (plan[2].out / "last.pt").write_bytes(b"not a checkpoint")  # its resume fails
    train(plan[3].config)  # complete: skipped
    reference = train(plan[1].config.replace(out=str(tmp_path / "ref")))  # uninterrupted
    before = (plan[0].out / "last.pt").stat().st_mtime_ns
    argv = ["compare", "--optimizers", ",".join(VARIANTS), "--seeds", "0,1", "--jobs", "2"]
    code = main([*argv, "--out", str(out), *FLAGS])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    assert "[1/4] sgd seed 0: complete, skipped" in stdout
    assert "[2/4] sgd seed 1: resuming after epoch 1 (1 thread) -> " in stdout
    assert "[2/4] sgd seed 1: done (2 epochs, " in stdout
    assert "[3/4] xsam:rho=0.05 seed 0: FAILED: cannot read checkpoint" in stdout
    assert "[4/4] xsam:rho=0.05 seed 1: complete, skipped" in stdout
    err = stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xsam: error: 1 run(s) failed (xsam:rho=0.05 seed 0")
    # the others' results are there; the resumed run equals the uninterrupted one
    assert (plan[0].out / "last.pt").stat().st_mtime_ns == before
    assert _metrics(plan[1].out) == without_times(reference["metrics"])
    assert "| sgd | 2 |" in stdout and "| xsam:rho=0.05 | 1 of 2 |" in stdout
    # one seed per variant: one line instead of a verdict per pair (results.md has them all)
    assert "One seed per variant: no paired intervals" in stdout
    assert f"| xsam:rho=0.05 {chr(0x2212)} sgd | 1 |" in (out / "results.md").read_text()
    md = (out / "results.md").read_text()
    assert "## Failed runs" in md and "xsam:rho=0.05 seed 0" in md
    numbers = json.loads((out / "results.json").read_text())
    assert [f["seed"] for f in numbers["failed"]] == [0]
    assert numbers["pairs"][0]["seeds"] == [1]


def test_jobs_must_be_positive(tmp_path):
    try:
        cmp.run_compare(BASE, cmp.parse_variants(["sgd"]), [0], tmp_path, jobs=0)
    except ConfigError as exc:
        assert "jobs should be an integer >= 1" in str(exc)
    else:
        raise AssertionError("jobs=0 accepted")
    assert not any(tmp_path.iterdir())
