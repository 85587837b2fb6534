"""``xsam demo``: the regime where sharpness-aware training pays, in about three minutes.

A multilayer perceptron trained on the Fashion-MNIST sample embedded in the package, with 40%
of the training labels flipped to a wrong class (symmetric noise; the test labels are clean).
Plain SGD memorises the wrong labels: its test accuracy peaks early and then falls while its
accuracy on the noisy training labels climbs. SAM and XSAM resist (Foret et al., ICLR 2021,
Table 4, show the same on CIFAR-10). One seed per optimizer: the demo shows the pattern, not a
verdict between SAM and XSAM; the caption it writes says so with the run's own numbers.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .compare import PLOTS_SKIPPED, load_runs, parse_seeds, plotting_available
from .config import TrainConfig, resolve_config
from .names import DEMO_DIR, DEMO_EPOCHS, DEMO_OPTIMIZERS, DEMO_PRESET
from .progress import epoch_summary, watch_epochs

__all__ = [
    "DEMO_DIR",
    "DEMO_EPOCHS",
    "DEMO_OPTIMIZERS",
    "DEMO_PRESET",
    "demo_caption",
    "demo_plan",
    "epoch_summary",
    "watch_epochs",
    "plot_demo",
    "write_demo_report",
]


def demo_plan(
    out: str | Path | None = None,
    epochs: int | str | None = None,
    seeds: str | Sequence[int] = "0",
    device: str | None = None,
    threads: int | str | None = None,
) -> tuple[TrainConfig, list[str], list[int], Path]:
    """What ``xsam demo`` runs: ``(base config, optimizer variants, seeds, folder)``.

    Each run uses one CPU thread unless ``threads`` says otherwise: with more, the order of
    the floating-point sums inside the matrix products depends on the thread count, and so
    does every number the demo prints (SGD's final test accuracy moved by tenths of a point
    between 1 and 2 threads)."""
    overrides: dict[str, Any] = {"epochs": epochs if epochs is not None else DEMO_EPOCHS}
    if device is not None:
        overrides["device"] = device
    overrides["threads"] = threads if threads is not None else 1
    base = resolve_config(DEMO_PRESET, overrides)
    base.validated()
    if out is None:
        out = Path(DEMO_DIR) / datetime.now().strftime("%Y%m%d-%H%M%S")
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else list(seeds)
    return base, list(DEMO_OPTIMIZERS), seed_list, Path(out)


def _final_and_peak(metrics: list[dict[str, Any]]) -> tuple[float, float, int]:
    peak = max(metrics, key=lambda r: r["test_acc"])
    return 100 * metrics[-1]["test_acc"], 100 * peak["test_acc"], int(peak["epoch"])


def demo_caption(runs: Sequence[dict[str, Any]]) -> str:
    """One paragraph on what this demo's runs show and what one seed cannot show, with the
    runs' own numbers (``runs`` as :func:`xsam.train.compare.load_runs` returns them)."""
    done = [r for r in runs if r["metrics"]]
    if not done:
        return "No run finished, so there is nothing to show yet."
    parts = []
    for r in done:
        final, peak, at = _final_and_peak(r["metrics"])
        memo = r["metrics"][-1].get("memorized")
        memo_text = (
            f", {100 * memo:.0f}% of the flipped labels memorised" if memo is not None else ""
        )
        parts.append(
            f"{r['label']} ended at {final:.1f}% test accuracy (peak {peak:.1f}% at epoch {at}"
            f"{memo_text})"
        )
    seeds = sorted({r["seed"] for r in done})
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return (
        f"With 40% of the training labels wrong ({seed_text}): " + "; ".join(parts) + ". "
        "A falling test accuracy while the fraction of memorised wrong labels rises is "
        "memorisation; the gap between the plain optimizer and the SAM family at the end is the "
        "benefit this regime offers. What one seed cannot show is whether SAM and XSAM differ: "
        "differences of a point or so between them are within seed-to-seed variation. For a "
        "verdict run several seeds (`xsam compare --seeds 0-4`, which prints paired "
        "differences with 95% intervals) or read BENCHMARKS.md (label-noise section)."
    )


def plot_demo(runs: Sequence[dict[str, Any]], out_dir: str | Path) -> Path | None:
    """``demo.png``: test accuracy and the memorised fraction of flipped labels per epoch,
    one line per run. ``None`` without matplotlib or without a finished epoch."""
    if not any(r["metrics"] for r in runs):
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(9.6, 3.8), layout="constrained")
    acc, memo = fig.subplots(1, 2)
    for r in runs:
        m = r["metrics"]
        if not m:
            continue
        epochs = [row["epoch"] for row in m]
        acc.plot(epochs, [100 * row["test_acc"] for row in m], marker="o", ms=3, label=r["label"])
        values = [row.get("memorized") for row in m]
        memo.plot(
            epochs,
            [100 * v if v is not None else math.nan for v in values],
            marker="o",
            ms=3,
            label=r["label"],
        )
    acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="clean test labels")
    memo.set(
        xlabel="epoch",
        ylabel="flipped labels memorised (%)",
        title="training examples with a wrong label",
    )
    for ax in (acc, memo):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(out_dir) / "demo.png"
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_demo_report(
    out_dir: str | Path, table: str, say: Callable[[str], None] | None = None
) -> list[Path]:
    """``demo.md`` (the table and the caption) and ``demo.png`` in ``out_dir``; returns the
    files written."""
    out_dir = Path(out_dir)
    runs = load_runs(out_dir)
    caption = demo_caption(runs)
    text = (
        "# xsam demo: 40% label noise, MLP, Fashion-MNIST sample\n\n"
        f"{table}\n\n![test accuracy and memorisation](demo.png)\n\n{caption}\n"
    )
    atomic_write_text(out_dir / "demo.md", text)
    files = [out_dir / "demo.md"]
    plot = plot_demo(runs, out_dir)
    if plot is not None:
        files.append(plot)
    elif not plotting_available():
        print(f"xsam: {PLOTS_SKIPPED}", file=sys.stderr)
    if say is not None:
        say(caption)
    return files
