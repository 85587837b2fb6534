"""Committed comparison results: one ``runs.jsonl`` per grid instead of a folder per run.

    python benchmarks/consolidate_results.py runs/noise/grid        # write runs.jsonl, check it
    python benchmarks/consolidate_results.py --prune benchmarks/results/noise/fmnist_mlp_n40/grid
    python benchmarks/consolidate_results.py --check benchmarks/results

    python benchmarks/consolidate_results.py --expand benchmarks/results/vit/fmnist_vit_n40 \
        --into runs/vit/fmnist_vit_n40      # continue a committed study on another machine

(``--prune`` on the committed copy of a folder: a rerun of the comparison resumes from the run
folders it deletes. ``--expand`` is the way back: each comparison folder under the given path
is copied under ``--into`` with its run folders written again from ``runs.jsonl``, so that a
rerun of the study skips the finished runs; run folders already there are left as they are.)

A comparison folder (``xsam compare`` / ``xsam tune``) holds a folder per run with its
``config.json``, ``run.json`` and ``metrics.jsonl``. This writes them into one file per
comparison folder, ``runs.jsonl`` (:data:`xsam.train.compare_report.RUNS_FILE`: one line per
run, the three files' contents as they are), and checks that the runs read back from it are the
runs read from the folders: configs, per-epoch metrics, completeness and recorded threads.
With ``--prune`` the run folders are then deleted, one whose files are all in ``runs.jsonl``
(a folder holding anything else, such as kept checkpoints, is left and named). Reports read a
run from ``runs.jsonl`` when its folder is gone (:func:`xsam.train.compare_report.load_runs`).

``--check``: every comparison folder under the given paths is reported again from the runs
as they are read now, and compared with what is committed: the rows and pairs of
``results.json``, the table and the pairs table in ``results.md``, and for a ρ sweep
(``xsam tune``) the validation accuracies in ``tune.json``. Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from xsam.train.checkpoint import CONFIG, METRICS_JSONL, RUN_INFO
from xsam.train.compare_plan import MANIFEST, RESULTS_JSON, RESULTS_MD
from xsam.train.compare_report import (
    RUNS_FILE,
    aggregate,
    compare_pairs,
    consolidate_runs,
    format_pairs,
    format_table,
    load_runs,
    read_runs_file,
    run_threads,
)

PER_RUN_FILES = (CONFIG, RUN_INFO, METRICS_JSONL)


def comparison_folders(paths: list[Path]) -> list[Path]:
    """The comparison folders (with a ``compare.json``) at or under ``paths``, sorted."""
    found: set[Path] = set()
    for path in paths:
        if (path / MANIFEST).is_file():
            found.add(path)
        found.update(p.parent for p in path.rglob(MANIFEST))
    return sorted(found)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), to compare records with their files."""
    return json.loads(json.dumps(value))


def _comparable(runs: list[dict[str, Any]]) -> list[Any]:
    return [
        (
            r["label"],
            r["seed"],
            Path(r["dir"]).name,
            r["config"],
            _plain(r["metrics"]),
            r["complete"],
        )
        for r in runs
    ]


def consolidate(folder: Path, *, prune: bool) -> list[str]:
    """Write ``runs.jsonl`` for one comparison folder, check it, and with ``prune`` delete the
    run folders it holds. Returns the problems found (none: it is done)."""
    from_folders = load_runs(folder)
    path = consolidate_runs(folder)
    from_file = load_runs(path)
    if _comparable(from_file) != _comparable(from_folders):
        return [f"{path}: the runs read back differ from the run folders"]
    if run_threads(from_file) != run_threads(from_folders):
        return [f"{path}: the recorded threads read back differ from the run folders"]
    if not prune:
        return []
    problems = []
    for run in from_folders:
        run_dir = Path(run["dir"])
        if not run_dir.is_dir():
            continue
        others = sorted(p.name for p in run_dir.iterdir() if p.name not in PER_RUN_FILES)
        if others:
            problems.append(f"{run_dir} kept: it also holds {', '.join(others)}")
            continue
        shutil.rmtree(run_dir)
    return problems


def expand(folder: Path, dest: Path) -> list[str]:
    """Copy the comparison folder ``folder`` to ``dest`` (files already there are kept) and
    write each run of its ``runs.jsonl`` that started back into a run folder (``config.json``,
    ``run.json``, ``metrics.jsonl``) where ``dest`` has none. Returns the problems found."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.is_file() and not (dest / item.name).exists():
            shutil.copy2(item, dest / item.name)
    runs_file = folder / RUNS_FILE
    if not runs_file.is_file():
        return []
    written = []
    for name, saved in read_runs_file(runs_file).items():
        run_dir = dest / name
        if run_dir.exists() or saved["config"] is None:  # there already, or it never started
            continue
        run_dir.mkdir()
        (run_dir / CONFIG).write_text(json.dumps(saved["config"], indent=2) + "\n")
        if saved["run"] is not None:
            (run_dir / RUN_INFO).write_text(json.dumps(saved["run"], indent=2) + "\n")
        rows = "".join(json.dumps(row) + "\n" for row in saved["metrics"])
        (run_dir / METRICS_JSONL).write_text(rows)
        written.append(name)
    mine = [r for r in load_runs(dest) if Path(r["dir"]).name in written]
    saved_runs = [r for r in load_runs(runs_file) if Path(r["dir"]).name in written]
    if _comparable(mine) != _comparable(saved_runs):
        return [f"{dest}: the runs written back differ from {runs_file}"]
    return []


def check(folder: Path) -> list[str]:
    """The differences between what ``folder``'s runs give now and its committed reports."""
    runs = load_runs(folder)
    problems = []
    if (folder / RESULTS_JSON).is_file():
        committed = json.loads((folder / RESULTS_JSON).read_text())
        rows = aggregate(runs)
        chosen = [(p["label_a"], p["label_b"]) for p in committed["pairs"]]
        pairs = compare_pairs(runs, chosen)
        markdown = (folder / RESULTS_MD).read_text()
        if _plain(rows) != committed["rows"]:
            problems.append(f"{folder / RESULTS_JSON}: rows differ")
        if _plain(pairs) != committed["pairs"]:
            problems.append(f"{folder / RESULTS_JSON}: pairs differ")
        if format_table(rows) not in markdown:
            problems.append(f"{folder / RESULTS_MD}: the table differs")
        if pairs and format_pairs(pairs) not in markdown:
            problems.append(f"{folder / RESULTS_MD}: the pairs table differs")
    if (folder / "tune.json").is_file():
        problems += _check_tune(folder, runs)
    return problems


def _check_tune(folder: Path, runs: list[dict[str, Any]]) -> list[str]:
    """Every candidate's final validation accuracies (%) per seed, as ``tune.json`` has them."""
    committed = json.loads((folder / "tune.json").read_text())
    problems = []
    for c in committed["candidates"]:
        done = [r for r in runs if r["label"] == c["label"] and r["complete"] and r["metrics"]]
        vals = [100.0 * r["metrics"][-1]["val_acc"] for r in done]
        names = [Path(r["dir"]).name for r in done]
        if vals != c["val_acc"] or names != c["runs"]:
            problems.append(f"{folder / 'tune.json'}: candidate {c['label']} differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", type=Path, help="comparison folders, or folders above")
    p.add_argument("--prune", action="store_true", help="delete the consolidated run folders")
    p.add_argument("--check", action="store_true", help="compare the reports with the runs")
    p.add_argument("--expand", action="store_true", help="write the run folders back (--into)")
    p.add_argument("--into", type=Path, help="with --expand: where the folders are written")
    ns = p.parse_args(argv)
    if ns.expand != (ns.into is not None):
        p.error("--expand and --into go together")
    if ns.expand and len(ns.paths) != 1:
        p.error("--expand takes one folder (the study, or one comparison folder)")
    folders = comparison_folders(ns.paths)
    if not folders:
        print(f"no comparison folder ({MANIFEST}) under {', '.join(map(str, ns.paths))}")
        return 1
    problems = []
    for folder in folders:
        if ns.expand:
            found = expand(folder, ns.into / folder.relative_to(ns.paths[0]))
        elif ns.check:
            found = check(folder)
        else:
            found = _consolidate_leaf(folder, ns.prune)
        problems += found
        print(f"{folder}: {'; '.join(found) if found else 'ok'}")
    return 1 if problems else 0


def _consolidate_leaf(folder: Path, prune: bool) -> list[str]:
    """Consolidate a folder whose runs are its own subfolders; a folder that only names runs
    of other comparison folders (``grid/sgd-seed0``) reads them from their ``runs.jsonl``."""
    manifest = json.loads((folder / MANIFEST).read_text())
    if any(Path(r["dir"]).parent != Path(".") for r in manifest["runs"]):
        return []
    return consolidate(folder, prune=prune)


if __name__ == "__main__":
    sys.exit(main())
