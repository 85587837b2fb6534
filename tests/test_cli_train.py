"""``xsam train`` at its edges: ``--resume`` continues the saved config (the same preset named
again resets nothing), a refused resume suggests the safe way first, and the data-not-found
message fits what the user passed."""

from __future__ import annotations

import json

import pytest

from xsam.__main__ import main
from xsam.data import DataError, load_dataset
from xsam.train import read_metrics

TINY = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--threads", "1"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_resume_continues_the_saved_config_with_the_same_preset(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--preset", "fmnist-sample-noise-mlp", "--epochs", "2", "--lr", "0.02"]
    argv += [*TINY, "--width", "32", "--out", str(out), "--quiet"]
    assert run(capsys, *argv, "--stop-after", "1")[0] == 0
    # the preset again, without the flags that changed it: the saved config goes on
    code, _, err = run(
        capsys, "train", "--preset", "fmnist-sample-noise-mlp", "--out", str(out), "--resume"
    )
    assert code == 0, err
    assert len(read_metrics(out)) == 2
    assert json.loads((out / "config.json").read_text())["lr"] == 0.02


def test_resume_refusals_suggest_the_safe_way_first(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--preset", "fmnist-sample-noise-mlp", "--epochs", "2", *TINY]
    assert run(capsys, *argv, "--width", "32", "--out", str(out), "--stop-after", "1")[0] == 0
    code, _, err = run(
        capsys, "train", "--preset", "cifar10-resnet18", "--out", str(out), "--resume"
    )
    assert code == 2 and "drop --preset" in err and "another --out" in err
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", "--lr", "0.3")
    assert code == 2 and "lr: 0.05 -> 0.3" in err
    assert err.index("drop the changed flag") < err.index("--force")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_data_not_found_fits_what_was_passed(tmp_path, monkeypatch, name):
    monkeypatch.delenv("XSAM_DATA", raising=False)
    with pytest.raises(DataError) as given:
        load_dataset(name, tmp_path)
    assert str(tmp_path) in str(given.value) and "pass --data-dir" not in str(given.value)
    assert "check that --data-dir" in str(given.value)
