"""The label-noise tables of BENCHMARKS.md, from the runs of comparison folders.

    python benchmarks/noise_table.py benchmarks/results/noise/fmnist_mlp_n40/grid
    python benchmarks/noise_table.py benchmarks/results/noise/mnist_mlp_n40/{grid,equal} --ranges

One row per variant over its complete runs (the runs as ``xsam.train.compare.load_runs`` reads
them: run folders, or the folder's ``runs.jsonl``): the seeds; the final test accuracy and the
best-epoch test accuracy, mean ± sample std, with the mean of the seeds' best epochs (rounded)
in brackets; the wrong labels memorised at the end and the training accuracy on the noisy
labels, mean ± sample std (``--ranges``: lowest–highest seed); the wall time per run (mean, s).
``tests/test_compare_runs_file.py`` checks the tables in BENCHMARKS.md against these cells.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xsam.train.compare import load_runs, mean_std

COLUMNS = {
    "seeds": "seeds",
    "final": "final test acc (%)",
    "best [epoch]": "best-epoch test acc (%) [epoch]",
    "memorised": "wrong labels memorised at the end (%)",
    "noisy": "train acc on noisy labels (%)",
    "wall": "wall per run (s)",
}
"""The cells of a row (keys of :func:`variant_cells`) and their headers."""


def _pm(values: list[float], digits: int) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _range(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}"


def _best_epoch(metrics: list[dict[str, Any]]) -> int:
    """The first epoch with the run's highest test accuracy."""
    accs = [m["test_acc"] for m in metrics]
    return accs.index(max(accs)) + 1


def variant_cells(runs: list[dict[str, Any]]) -> dict[str, str]:
    """The formatted cells of one variant's complete runs (accuracies in %)."""
    last = [r["metrics"][-1] for r in runs]
    bests = [100.0 * max(m["test_acc"] for m in r["metrics"]) for r in runs]
    epoch = round(sum(_best_epoch(r["metrics"]) for r in runs) / len(runs))
    memorised = [100.0 * m["memorized"] for m in last]
    noisy = [100.0 * m["train_acc_noisy"] for m in last]
    return {
        "seeds": str(len(runs)),
        "final": _pm([100.0 * m["test_acc"] for m in last], 2),
        "best": _pm(bests, 2),
        "best [epoch]": f"{_pm(bests, 2)} [{epoch}]",
        "memorised": _pm(memorised, 1),
        "memorised range": _range(memorised),
        "noisy": _pm(noisy, 1),
        "noisy range": _range(noisy),
        "wall": f"{mean_std([m['wall_s'] for m in last])[0]:.0f}",
    }


def table_cells(folders: list[Path]) -> dict[str, dict[str, str]]:
    """``{label: cells}`` for every variant of the comparison folders, in their order."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        for r in load_runs(folder):
            if r["complete"] and r["metrics"]:
                by_label.setdefault(r["label"], []).append(r)
    return {label: variant_cells(runs) for label, runs in by_label.items()}


def render(cells: dict[str, dict[str, str]], *, ranges: bool = False) -> str:
    keys = list(COLUMNS)
    if ranges:
        keys = [f"{k} range" if k in ("memorised", "noisy") else k for k in keys]
    head = ["variant", *(COLUMNS[k.removesuffix(" range")] for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(keys)]
    for label, c in cells.items():
        lines.append("| " + " | ".join([label, *(c[k] for k in keys)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="comparison folders")
    p.add_argument("--ranges", action="store_true", help="memorised / noisy as lowest–highest")
    ns = p.parse_args(argv)
    print(render(table_cells(ns.folders), ranges=ns.ranges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
