"""Tests for the ``xsam`` command: end to end on tiny data, and every bad input -> exit 2."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xsam.__main__ import main
from xsam.models import MODEL_NAMES
from xsam.train import PRESETS, read_metrics

TINY = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--threads", "1"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(capsys, argv, *fragments: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xsam: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_help_and_presets(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "train" in out and "compare" in out and "demo" in out
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0 and "--resume" in out and "--alpha-every" in out and "--preset" in out
    code, out, _ = run(capsys, "presets")
    assert code == 0 and all(name in out for name in PRESETS)
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


def test_train_end_to_end_then_resume_and_force(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "xsam", "--epochs", "2", *TINY, "--out", str(out)]
    code, stdout, _ = run(capsys, *argv, "--stop-after", "1")
    assert code == 0 and "epoch   1/2" in stdout and "stopped after epoch 1" in stdout
    assert len(read_metrics(out)) == 1
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["epochs"], config["limit_train"]) == ("xsam", 2, 128)
    code, stdout, _ = run(capsys, "train", "--out", str(out), "--resume", "--quiet")
    assert code == 0 and stdout == "" and len(read_metrics(out)) == 2
    code, stdout, _ = run(capsys, *argv, "--resume")  # the same command again: complete
    assert code == 0 and "already complete" in stdout
    assert_usage_error(capsys, argv, "already holds a run", "--force")
    code, stdout, _ = run(capsys, *argv, "--force", "--epochs", "1", "--quiet")
    assert code == 0 and len(read_metrics(out)) == 1


def test_train_default_run_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run(capsys, "train", "--optimizer", "sgd", "--epochs", "1", *TINY, "--quiet")
    assert code == 0
    assert (tmp_path / "runs/fashion-mnist-sample-small_cnn-sgd-seed0/last.pt").is_file()


def test_compare_end_to_end(capsys, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--optimizers", "sgd;sgd:lr=0.1", "--seeds", "0,1", "--epochs", "1"]
    code, stdout, _ = run(capsys, *argv, *TINY, "--out", str(out))
    assert code == 0
    assert "| optimizer | runs | final test acc (%)" in stdout and "| sgd:lr=0.1 | 2 |" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["compare.json", "results.md", "results.json", "test_acc.png"]
        + [f"{v}-seed{s}" for v in ("sgd", "sgd_lr0.1") for s in (0, 1)]
    )
    code, stdout, _ = run(capsys, *argv, *TINY, "--out", str(out))
    assert code == 0 and stdout.count("complete, skipped") == 4


# ---------------------------------------------------------------------- bad input -> exit 2
@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["train", "--dataset", "imagenet"], ["unknown dataset 'imagenet'", "fashion-mnist"]),
        (["train", "--model", "resnet9"], ["unknown model 'resnet9'", "resnet20"]),
        (["train", "--optimizer", "adam"], ["unknown optimizer 'adam'", "sgd, sam, xsam"]),
        (["train", "--preset", "cifar10"], ["unknown preset 'cifar10'", "cifar10-resnet18"]),
        (["train", "--lr", "fast"], ["lr", "'fast'"]),
        (["train", "--rho", "-0.1"], ["rho should be >= 0"]),
        (["train", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["fly"], ["invalid choice: 'fly'"]),
        (["train", "--config", "/nonexistent/c.json"], ["cannot read config file"]),
        (["train", "--resume", "--force"], ["exclude each other"]),
        (["compare", "--optimizers", "sgd,adam"], ["unknown optimizer 'adam'"]),
        (["compare", "--optimizers", "sam:rhoo=1"], ["unknown config key 'rhoo'"]),
        (["compare", "--seeds", "x"], ["seeds should look like"]),
        (["demo", "--epochs", "0"], ["epochs should be >= 1"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, argv, fragments):
    assert_usage_error(capsys, [*argv, "--out", str(tmp_path / "o")], *fragments)
    assert not (tmp_path / "o").exists()  # rejected before anything is written


def test_missing_and_corrupt_data_files(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["train", "--dataset", "fashion-mnist", "--epochs", "1"]
    assert_usage_error(
        capsys, [*base, "--data-dir", str(empty), "--out", str(tmp_path / "a")],
        "fashion-mnist", "train-images-idx3-ubyte", str(empty),
    )  # fmt: skip
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x00"))
    assert_usage_error(
        capsys, [*base, "--data-dir", str(bad), "--out", str(tmp_path / "b")],
        "train-images-idx3-ubyte.gz", "corrupt",
    )  # fmt: skip
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    assert_usage_error(
        capsys, [*base, "--data-dir", str(trunc), "--out", str(tmp_path / "c")],
        "has no train-labels-idx1-ubyte[.gz]",
    )  # fmt: skip
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (trunc / f"{name}.gz").write_bytes((bad / f"{name}.gz").read_bytes())
    assert_usage_error(
        capsys, [*base, "--data-dir", str(trunc), "--out", str(tmp_path / "c")],
        "train-images-idx3-ubyte", "truncated",
    )  # fmt: skip


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = ["train", "--epochs", "1", *TINY]
    assert_usage_error(capsys, [*argv, "--out", str(blocker / "run")], "cannot write", "file")
    assert_usage_error(capsys, [*argv, "--out", str(blocker)], "not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert_usage_error(capsys, [*argv, "--out", str(ro / "run")], "cannot write")
    assert_usage_error(
        capsys, ["compare", "--optimizers", "sgd", "--seeds", "0", "--out", str(blocker)],
        "not a folder",
    )  # fmt: skip


def test_existing_run_folder_and_resume_conflicts(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "sgd", "--epochs", "1", *TINY, "--out", str(out)]
    assert run(capsys, *argv)[0] == 0
    before = (out / "last.pt").read_bytes()
    assert_usage_error(capsys, argv, "already holds a run", "--resume", "--force")
    assert_usage_error(
        capsys, ["train", "--out", str(out), "--resume", "--lr", "0.2"],
        "config differs", "lr: 0.05 -> 0.2",
    )  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    (out / "last.pt").write_bytes(b"\x00corrupt")
    assert_usage_error(capsys, ["train", "--out", str(out), "--resume"], "cannot read checkpoint")
    (out / "last.pt").unlink()
    (out / "metrics.jsonl").write_text("")  # stopped before its first epoch ended
    code, _, _ = run(capsys, "train", "--out", str(out), "--resume", "--quiet")
    assert code == 0 and len(read_metrics(out)) == 2  # started over: nothing to keep
    assert before != (out / "last.pt").read_bytes()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    assert_usage_error(capsys, [*argv[:-1], str(foreign)], "holds no run")
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_console_entry_point_exit_status_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "xsam", "train", "--model", "nope", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"xsam: error: unknown model 'nope'; accepted: {', '.join(MODEL_NAMES)}"
    ]
    assert proc.stdout == "" and not (tmp_path / "x").exists()


def test_force_then_probe_reads_no_weights_of_the_earlier_run(capsys, tmp_path):
    """`xsam train --force` deletes the earlier run's checkpoints/epochNNN.pt, which `xsam
    probe` would otherwise read as the new run's."""
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "sgd", *TINY, "--out", str(out), "--quiet"]
    assert run(capsys, *argv, "--epochs", "2", "--keep-checkpoints")[0] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch001.pt", "epoch002.pt"]
    assert run(capsys, *argv, "--epochs", "1", "--force")[0] == 0
    assert not (out / "checkpoints").exists()
    assert_usage_error(capsys, ["probe", str(out), "--quiet"], "no kept checkpoints")


def test_settings_the_optimizer_does_not_use_are_accepted_with_a_note(capsys, tmp_path):
    """`--optimizer sgd --rho-max 0` used to be refused though SGD never uses rho_max:
    settings of the SAM family (XSAM, the SGD base) are ignored by the other optimizers."""
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "sgd", "--epochs", "1", *TINY, "--out", str(out)]
    code, stdout, err = run(capsys, *argv, "--rho-max", "0", "--alpha-every", "0")
    assert code == 0, err
    note = "note: not used by optimizer sgd with base sgd, ignored: --rho-max, --alpha-every"
    assert note in stdout
    assert json.loads((out / "config.json").read_text())["rho_max"] == 0.0
    code, stdout, _ = run(capsys, *argv, "--rho-max", "0", "--force", "--quiet")
    assert code == 0 and stdout == ""
    argv = ["train", "--optimizer", "xsam", *TINY, "--out", str(tmp_path / "x")]
    assert_usage_error(capsys, [*argv, "--rho-max", "0"], "rho_max should be > 0")
    code, out_help, _ = run(capsys, "train", "--help")
    out_help = " ".join(out_help.split())  # argparse wraps lines where it likes
    assert "[xsam] radius of the α search probes" in out_help and "accepted and ignored" in out_help
