"""The plots of a comparison: ``test_acc.png`` (test accuracy per epoch) and ``alpha.png``
(α per epoch), the mean curve and its ±1 std band for each variant over the seeds.

matplotlib is optional: :func:`plotting_available` says whether it imports, and :func:`plot_runs`
writes nothing without it. Re-exported by :mod:`xsam.train.compare_report` and
:mod:`xsam.train.compare`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .compare_plan import PLOT_ACC, PLOT_ALPHA
from .stats import mean_std

if TYPE_CHECKING:
    from .compare_report import RunRecord

__all__ = ["PLOTS", "PLOTS_SKIPPED", "plot_runs", "plotting_available"]

PLOTS_SKIPPED = (
    "plots skipped: matplotlib is not installed (pip install 'torch-xsam[plot]', or "
    "pip install matplotlib, then rerun the command: finished runs are not trained again)"
)


def plotting_available() -> bool:
    """Whether matplotlib can be imported (the plots need it; everything else does not)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _series(runs: Sequence[RunRecord], label: str, key: str, scale: float = 1.0):
    curves = [
        [scale * m[key] if m.get(key) is not None else math.nan for m in r["metrics"]]
        for r in runs
        if r["label"] == label and r["metrics"]
    ]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    epochs = list(range(1, length + 1))
    stats = [mean_std([c[i] for c in curves]) for i in range(length)]
    return epochs, [s[0] for s in stats], [s[1] for s in stats]


PLOTS = (
    ("test_acc", 100.0, "test accuracy (%)", PLOT_ACC),
    ("alpha", 1.0, "α in use at the end of the epoch", PLOT_ALPHA),
)
"""The plots of a comparison: the metric, its scale, the y label and the file."""


def plot_runs(runs: Sequence[RunRecord], out_dir: str | Path) -> list[Path]:
    """``test_acc.png`` (test accuracy per epoch, mean and ±1 std band per variant) and, when a
    run logged α, ``alpha.png`` (α per epoch). Returns the files written (none without
    matplotlib)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError:
        return []
    written = []
    for key, scale, ylabel, name in PLOTS:
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.add_subplot()
        if not _draw_curves(ax, runs, key, scale):
            continue
        ax.set_title(_seeds_title(runs), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = Path(out_dir) / name
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
        written.append(path)
    return written


def _draw_curves(ax: Any, runs: Sequence[RunRecord], key: str, scale: float) -> bool:
    """One mean curve (and ±1 std band) per variant; whether any was drawn."""
    drawn = False
    for label in dict.fromkeys(r["label"] for r in runs):
        s = _series(runs, label, key, scale)
        if s is None or all(math.isnan(v) for v in s[1]):
            continue
        epochs, mean, std = s
        (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=label)
        if any(v > 0 for v in std):
            lo = [m - d for m, d in zip(mean, std)]
            hi = [m + d for m, d in zip(mean, std)]
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    return drawn


def _seeds_title(runs: Sequence[RunRecord]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"mean ± std over seeds {', '.join(map(str, seeds))}"
