"""``xsam compare`` at its edges: results.md states the CPU threads the runs used, and a missing
plotting backend (matplotlib) is reported, the plots skipped."""

from __future__ import annotations

import sys

from xsam.__main__ import main
from xsam.train import compare as cmp

TINY = ["--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--threads", "1"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_results_md_states_the_threads_the_runs_used(capsys, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", "--optimizers", "sgd", "--seeds", "0", "--epochs", "1", *TINY]
    assert run(capsys, *argv, "--out", str(out), "--quiet")[0] == 0
    text = (out / "results.md").read_text()
    assert "- CPU threads per run: 1 (as each run recorded it)" in text
    assert cmp.run_threads(cmp.load_runs(out)) == [1]


def test_missing_matplotlib_is_reported(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert not cmp.plotting_available()
    out = tmp_path / "cmp"
    argv = ["compare", "--optimizers", "sgd", "--seeds", "0", "--epochs", "1", *TINY]
    code, _, err = run(capsys, *argv, "--out", str(out), "--quiet")
    assert code == 0 and "plots skipped: matplotlib is not installed" in err
    assert "torch-xsam[plot]" in err and not (out / "test_acc.png").exists()


def test_plot_names_are_reexported_from_compare_report_and_compare():
    """The plots live in ``compare_plots``; ``compare_report`` and ``compare`` re-export the
    same objects (and ``mean_std`` from ``stats``), so imports from either keep working."""
    from xsam.train import compare_plots, compare_report, stats

    for name in ("PLOTS_SKIPPED", "plot_runs", "plotting_available"):
        assert getattr(cmp, name) is getattr(compare_report, name) is getattr(compare_plots, name)
    assert cmp.mean_std is compare_report.mean_std is stats.mean_std
