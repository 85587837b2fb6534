"""A comparison's runs in one file (``runs.jsonl``): written from the run folders, read back as
the same runs once the folders are gone, and every committed report regenerates from it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from xsam.train import ConfigError, TrainConfig
from xsam.train import compare as cmp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


script = _load_script("consolidate_results")


def _run_folder(root: Path, name: str, cfg: dict, test_accs: list, threads: int | None = 1):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(TrainConfig(epochs=2, **cfg).to_json())
    rows = [
        {"epoch": i + 1, "test_acc": a, "val_acc": a - 0.125, "wall_s": 1.5 * (i + 1), "alpha": 0.5}
        for i, a in enumerate(test_accs)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if threads is not None:
        (run / "run.json").write_text(json.dumps({"threads": threads, "train_examples": 100}))


@pytest.fixture
def grid(tmp_path):
    """sgd and xsam over seeds 0, 1: xsam seed 1 stopped after one of two epochs, sam never ran."""
    out = tmp_path / "grid"
    _run_folder(out, "sgd-seed0", {"optimizer": "sgd", "seed": 0}, [0.5, 0.8])
    _run_folder(out, "sgd-seed1", {"optimizer": "sgd", "seed": 1}, [0.625, 0.75], threads=2)
    _run_folder(out, "xsam-seed0", {"optimizer": "xsam", "seed": 0}, [0.5, 0.875])
    _run_folder(out, "xsam-seed1", {"optimizer": "xsam", "seed": 1}, [0.25], threads=None)
    entries = [(lb, s, f"{lb}-seed{s}") for lb in ("sgd", "xsam", "sam") for s in (0, 1)]
    manifest = {"runs": [{"label": lb, "seed": s, "dir": d} for lb, s, d in entries]}
    (out / "compare.json").write_text(json.dumps(manifest))
    return out


def _without_folders(out: Path) -> None:
    for run in out.iterdir():
        if run.is_dir():
            shutil.rmtree(run)


def test_runs_read_back_from_the_file_equal_the_run_folders(grid):
    before = cmp.load_runs(grid)
    threads = cmp.run_threads(before)
    path = cmp.consolidate_runs(grid)
    assert path == grid / cmp.RUNS_FILE
    assert len(path.read_text().splitlines()) == 6  # one line per planned run
    _without_folders(grid)
    after = cmp.load_runs(grid)
    assert after == before  # labels, seeds, dirs, configs, metrics, completeness
    assert [r["complete"] for r in after] == [True, True, True, False, False, False]
    assert threads == [1, 2] and cmp.run_threads(after) == threads
    assert cmp.run_info(grid / "sgd-seed1") == {"threads": 2, "train_examples": 100}
    assert cmp.run_info(grid / "xsam-seed1") is None
    assert cmp.load_runs(path) == after  # the file alone
    assert cmp.format_table(cmp.aggregate(after)) == cmp.format_table(cmp.aggregate(before))


def test_consolidating_again_keeps_the_runs_whose_folders_are_gone(grid):
    first = cmp.consolidate_runs(grid).read_bytes()
    _without_folders(grid)
    assert cmp.consolidate_runs(grid).read_bytes() == first


def test_a_damaged_runs_file_is_named_with_its_line(grid):
    cmp.consolidate_runs(grid)
    _without_folders(grid)
    path = grid / cmp.RUNS_FILE
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match=r"runs\.jsonl \(line 2\)") as info:
        cmp.load_runs(grid)
    assert "\n" not in str(info.value)


def test_the_script_prunes_only_what_the_file_holds(grid):
    (grid / "xsam-seed0" / "checkpoints").mkdir()  # kept weights: not in runs.jsonl
    problems = script.consolidate(grid, prune=True)
    assert problems == [f"{grid / 'xsam-seed0'} kept: it also holds checkpoints"]
    assert sorted(p.name for p in grid.iterdir() if p.is_dir()) == ["xsam-seed0"]
    assert [r["complete"] for r in cmp.load_runs(grid)] == [True, True, True, False, False, False]


def test_the_script_check_finds_a_changed_report(grid, capsys):
    runs = cmp.load_runs(grid)
    rows, pairs = cmp.aggregate(runs), cmp.compare_pairs(runs, [("sgd", "xsam")])
    (grid / "results.json").write_text(json.dumps({"rows": rows, "pairs": pairs, "failed": []}))
    md = f"{cmp.format_table(rows)}\n\n{cmp.format_pairs(pairs)}\n"
    (grid / "results.md").write_text(md)
    assert script.check(grid) == []
    (grid / "results.md").write_text(md.replace("| sgd | 2 |", "| sgd | 3 |"))
    assert script.check(grid) == [f"{grid / 'results.md'}: the table differs"]
    assert script.main(["--check", str(grid)]) == 1
    assert "the table differs" in capsys.readouterr().out


def test_the_script_expands_a_pruned_study_into_resumable_run_folders(grid, tmp_path):
    from xsam.train.checkpoint import run_status

    before = {p.name: run_status(p)[::2] for p in grid.iterdir() if p.is_dir()}
    assert script.consolidate(grid, prune=True) == []
    again = tmp_path / "again"
    argv = ["--expand", str(grid), "--into", str(again)]
    assert script.main(argv) == 0
    # every run the file holds is a run folder again, in the state it had (xsam seed 1
    # stopped after epoch 1 of 2: partial, a rerun resumes it; sam never ran: no folder)
    after = {p.name: run_status(p)[::2] for p in again.iterdir() if p.is_dir()}
    assert after == before == {"sgd-seed0": ("complete", 2), "sgd-seed1": ("complete", 2),
                               "xsam-seed0": ("complete", 2), "xsam-seed1": ("partial", 1)}  # fmt: skip
    assert cmp.load_runs(again) == [
        {**r, "dir": str(again / Path(r["dir"]).name)} for r in cmp.load_runs(grid)
    ]
    (again / "sgd-seed0" / "metrics.jsonl").write_text("")  # a folder already there is kept
    assert script.main(argv) == 0
    assert run_status(again / "sgd-seed0")[0] == "started"


def test_the_script_refuses_expand_without_into(grid, capsys):
    with pytest.raises(SystemExit):
        script.main(["--expand", str(grid)])
    assert "--expand and --into go together" in capsys.readouterr().err


COMMITTED = script.comparison_folders([RESULTS])


def test_the_committed_comparisons_are_found():
    assert len(COMMITTED) >= 25  # every grid, sweep and tune folder of BENCHMARKS.md


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_report_regenerates_from_its_runs(folder):
    """results.json's rows and pairs, results.md's two tables and tune.json's validation
    accuracies, recomputed from the runs (runs.jsonl where the folders are gone)."""
    assert script.check(folder) == []


# ---------------------------------------------------------------------- BENCHMARKS.md's tables
noise_table = _load_script("noise_table")

NOISE = "noise/"
SAM_FAMILY_40 = {
    "SGD": "sgd",
    "SGD, 60 epochs (≈ the SAM family's compute)": "sgd:epochs=60",
    "SAM, ρ = 0.2": "sam:rho=0.2",
    "XSAM, ρ = 0.1": "xsam:rho=0.1",
    "ASAM, ρ = 8": "sam:adaptive=true,rho=8",
    "XSAM + adaptive, ρ = 4": "xsam:adaptive=true,rho=4",
}
MNIST_40 = {
    "SGD": "sgd",
    "SAM, ρ = 0.4": "sam:rho=0.4",
    "XSAM, ρ = 0.3 (validation choice)": "xsam:rho=0.3",
    "XSAM, ρ = 0.2 (first sweep's choice)": "xsam:rho=0.2",
    "SGD, 60 epochs (≈ the SAM family's compute)": "sgd:epochs=60",
}
NOISE_TABLES = [  # the text before the table, its comparison folders, its rows' variants
    ("**Accuracy, 5 paired seeds per cell**", ["fmnist_mlp_n40/grid"], SAM_FAMILY_40),
    ("**60% noise.**", ["fmnist_mlp_n60/grid"], {"SGD": "sgd", "SAM ρ = 0.2": "sam:rho=0.2",
                                                 "XSAM ρ = 0.2": "xsam:rho=0.2"}),
    ("**20% noise.**", ["fmnist_mlp_n20/grid"], {"SGD": "sgd", "SAM ρ = 0.1": "sam:rho=0.1",
                                                 "XSAM ρ = 0.1": "xsam:rho=0.1"}),
    ("### MNIST, 40% noise", ["mnist_mlp_n40/grid", "mnist_mlp_n40/equal"], MNIST_40),
    ("### A convolutional model", ["fmnist_cnn_n40/grid"], {"SGD": "sgd", "SAM, ρ = 0.2":
                                                             "sam:rho=0.2", "XSAM, ρ = 0.1":
                                                             "xsam:rho=0.1"}),
]  # fmt: skip
HEADERS = {
    "seeds": "seeds",
    "final test acc (%)": "final",
    "best-epoch test acc (%) [epoch]": "best [epoch]",
    "best test acc (%) [epoch]": "best [epoch]",
    "best test acc (%)": "best",
    "wrong labels memorised at the end (%)": "memorised",
    "memorised at the end (%)": "memorised range",
    "train acc on noisy labels (%)": "noisy",
    "noisy-label train acc (%)": "noisy range",
    "wall per run (s)": "wall",
}


def _markdown_table(text: str, marker: str) -> list[list[str]]:
    """The cells of the first table after ``marker`` (header row first; bold removed)."""
    lines = text[text.index(marker) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip().replace("**", "") for c in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize(
    "marker, folders, variants", NOISE_TABLES, ids=[t[0] for t in NOISE_TABLES]
)
def test_benchmarks_label_noise_tables_regenerate_from_the_runs(marker, folders, variants):
    """Every number of the label-noise tables in BENCHMARKS.md, recomputed from the runs."""
    head, *rows = _markdown_table((ROOT / "BENCHMARKS.md").read_text(), marker)
    cells = noise_table.table_cells([RESULTS / NOISE / f for f in folders])
    assert [row[0] for row in rows] == list(variants)
    for row in rows:
        got = cells[variants[row[0]]]
        for header, cell in zip(head[1:], row[1:], strict=True):
            assert got[HEADERS[header]] == cell, (row[0], header)


def test_benchmarks_schedule_table_regenerates_from_the_runs():
    """tradeoff.md / tradeoff.json (the table BENCHMARKS.md shows), recomputed from the six
    grids' runs.jsonl and the pooled cost measurements."""
    tradeoff = _load_script("schedule_tradeoff")
    folder = RESULTS / "schedules" / "fmnist_mlp_n40"
    prices = json.loads((folder / "cost.json").read_text())["updates"]
    done = tradeoff._by_label(cmp.load_runs(folder))
    full = "xsam:rho=0.1"
    rows = [tradeoff.variant_row(lb, r, done["sgd"], done[full], prices) for lb, r in done.items()]
    table = tradeoff.render(rows, "sgd", full)
    assert table + "\n" == (folder / "tradeoff.md").read_text()
    assert json.dumps(rows, indent=2) + "\n" == (folder / "tradeoff.json").read_text()
    assert table in (ROOT / "BENCHMARKS.md").read_text()
