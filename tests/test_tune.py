"""``xsam tune`` / ``tune_rho``: ρ chosen on the validation split, never on the test set."""

from __future__ import annotations

import json

import pytest

from xsam.__main__ import main
from xsam.train import ConfigError, TrainConfig
from xsam.train import tune as tune_mod
from xsam.train.tune import choose_rho, parse_rhos, rho_variants, tune_rho

BASE = TrainConfig(
    model="mlp",
    width=16,
    depth=1,
    limit_train=150,
    limit_test=100,
    val_size=100,
    batch_size=50,
    epochs=1,
    threads=1,
)
TINY = ["--model", "mlp", "--width", "16", "--depth", "1", "--limit-train", "150"]
TINY += ["--limit-test", "100", "--batch-size", "50", "--epochs", "1", "--threads", "1"]

# Distinctive test accuracies: none of them may show up in what tune writes or prints.
TEST_ACC = 0.8642


def _fake_train_plan(val_acc):
    """A stand-in for train_plan writing complete run folders whose final validation accuracy
    is ``val_acc(rho, seed)`` and whose test accuracy is :data:`TEST_ACC` (+ a little)."""

    def fake(plan, **kw):
        assert kw["epoch_lines"] is False  # epoch lines would print the test accuracy
        for run in plan:
            run.out.mkdir(parents=True, exist_ok=True)
            (run.out / "config.json").write_text(run.config.to_json())
            rows = [
                {
                    "epoch": e + 1,
                    "test_acc": TEST_ACC + 0.0001 * e,
                    "val_acc": val_acc(run.config.rho, run.seed)
                    - 0.01 * (run.config.epochs - e - 1),
                    "wall_s": 1.0,
                    "alpha": None,
                }
                for e in range(run.config.epochs)
            ]
            (run.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return []

    return fake


def _no_test_accuracy(text: str) -> None:
    assert "86.4" not in text and "0.864" not in text and "test_acc" not in text


def test_tune_picks_the_best_mean_validation_accuracy(tmp_path, monkeypatch, capsys):
    # mean val acc: rho 0.05 -> 0.60, 0.1 -> 0.70 (0.66, 0.74), 0.2 -> 0.65
    table = {0.05: (0.60, 0.60), 0.1: (0.66, 0.74), 0.2: (0.70, 0.60)}
    monkeypatch.setattr(tune_mod, "train_plan", _fake_train_plan(lambda r, s: table[r][s]))
    out = tmp_path / "tune"
    result = tune_rho(BASE.replace(epochs=3), "xsam:adaptive=true", "0.2,0.05,0.1", [0, 1], out)
    assert result["chosen"]["rho"] == 0.1 and result["edge"] is None
    assert result["chosen"]["label"] == "xsam:adaptive=true,rho=0.1"
    assert [c["rho"] for c in result["candidates"]] == [0.05, 0.1, 0.2]
    assert result["candidates"][1]["val_acc"] == [pytest.approx(66.0), pytest.approx(74.0)]
    assert result["chosen"]["val_acc_mean"] == pytest.approx(70.0)
    assert result["chosen"]["val_acc_std"] == pytest.approx(32**0.5)
    saved = json.loads((out / "tune.json").read_text())
    assert saved["chosen"]["rho"] == 0.1 and saved["rule"] == tune_mod.RULE
    assert saved["candidates"][2]["val_acc_mean"] == pytest.approx(65.0)
    md = (out / "tune.md").read_text()
    assert "| 0.1 | 2 | 70.00 ± 5.66 | chosen |" in md
    assert "chosen rho = 0.1 (final val acc 70.00 ± 5.66% over 2 seeds)" in md
    for text in (md, (out / "tune.json").read_text()):
        _no_test_accuracy(text)
    assert not (out / "results.md").exists() and not (out / "results.json").exists()
    # the same through the command line: one line with the choice, no test accuracy
    argv = ["tune", "--optimizer", "xsam:adaptive=true", "--rhos", "0.05,0.1,0.2"]
    argv += ["--seeds", "0,1", "--val-size", "100", *TINY, "--epochs", "3", "--out", str(out)]
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == ""
    assert (
        "chosen rho = 0.1 (final val acc 70.00 ± 5.66% over 2 seeds); "
        "the test accuracy was not looked at\n"
    ) in stdout
    assert "note:" not in stdout
    _no_test_accuracy(stdout)


def test_tune_ties_go_to_the_smaller_rho_and_edges_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune_mod, "train_plan", _fake_train_plan(lambda r, s: 0.5))
    result = tune_rho(BASE, "sam", [0.1, 0.05, 0.2], [0], tmp_path / "a")
    assert result["chosen"]["rho"] == 0.05 and result["edge"] == "smallest"
    monkeypatch.setattr(tune_mod, "train_plan", _fake_train_plan(lambda r, s: r))
    argv = ["tune", "--optimizer", "sam", "--rhos", "0.05,0.1,0.2", "--val-size", "100", *TINY]
    assert main([*argv, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.splitlines() == [
        "chosen rho = 0.2 (final val acc 20.00% over 1 seed); the test accuracy was not looked at",
        "note: the chosen rho (0.2) is the largest one tried; the best may lie above it: "
        "widen the sweep (e.g. add 0.4)",
    ]
    assert "largest one tried" in (tmp_path / "b" / "tune.md").read_text()
    # the selection rule alone
    cands = [{"rho": 0.3, "val_acc_mean": 71.0}, {"rho": 0.1, "val_acc_mean": 71.0}]
    assert choose_rho([*cands, {"rho": 0.2, "val_acc_mean": 70.9}])["rho"] == 0.1
    assert choose_rho([*cands, {"rho": 0.2, "val_acc_mean": 71.1}])["rho"] == 0.2


def test_tune_refuses_without_a_validation_split(tmp_path, capsys):
    with pytest.raises(ConfigError, match="needs --val-size"):
        tune_rho(BASE.replace(val_size=None), "xsam", [0.1, 0.2], [0], tmp_path / "t")
    assert not (tmp_path / "t").exists()
    code = main(["tune", "--rhos", "0.1,0.2", *TINY, "--out", str(tmp_path / "t")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip() == (
        "xsam: error: xsam tune needs --val-size N: rho is chosen on N training examples "
        "held out for validation, never on the test set"
    )
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--optimizer", "sgd"], "sgd has no rho"),
        (["--optimizer", "xsam:rho=0.1"], "fixes rho, which is what tune chooses"),
        (["--optimizer", "sam,xsam"], "--optimizer should be one variant"),
        (["--rhos", "0.1,x"], "rhos should be numbers"),
        (["--rhos", "0.1,-1"], "rhos should be numbers >= 0"),
        (["--rhos", "0.1,0.10"], "rhos should be distinct"),
        (["--jobs", "0"], "jobs should be an integer >= 1"),
        (["--rho", "0.1"], "unrecognized arguments: --rho"),
    ],
)
def test_tune_bad_input(argv, fragment, tmp_path, capsys):
    code = main(["tune", "--val-size", "100", *TINY, "--out", str(tmp_path / "t"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fragment in err[0], err


def test_parse_rhos_and_variants():
    assert parse_rhos("0.2, 0.05;0.1") == [0.05, 0.1, 0.2]
    vs = rho_variants("xsam", [0.05, 1e-5])
    assert [v.label for v in vs] == ["xsam:rho=0.05", "xsam:rho=1e-05"]
    assert vs[1].overrides == {"optimizer": "xsam", "rho": "1e-05"}
    assert rho_variants("sam:adaptive=true", [0.5])[0].label == "sam:adaptive=true,rho=0.5"


def test_tune_end_to_end(tmp_path, capsys):
    """A real (tiny) sweep: the runs train, the choice is the validation argmax."""
    out = tmp_path / "t"
    argv = ["tune", "--optimizer", "sam", "--rhos", "0.05,0.5", "--val-size", "100", *TINY]
    assert main([*argv, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    saved = json.loads((out / "tune.json").read_text())
    best = max(saved["candidates"], key=lambda c: (c["val_acc_mean"], -c["rho"]))
    assert saved["chosen"]["rho"] == best["rho"]
    assert f"chosen rho = {best['rho']:g} (final val acc {best['val_acc_mean']:.2f}%" in stdout
    assert "[1/2] sam:rho=0.05 seed 0: training -> " in stdout
    rest = stdout.replace("the test accuracy was not looked at", "").replace(str(tmp_path), "")
    assert "test" not in rest
    for c in saved["candidates"]:
        assert (out / c["runs"][0] / "metrics.jsonl").is_file()
