"""Reporting a comparison: its runs read back, statistics per variant and per pair, the
markdown table, ``results.md`` / ``results.json``; the plots are drawn by
:mod:`xsam.train.compare_plots` (re-exported here).

:func:`load_runs` reads the runs of a comparison folder (from ``compare.json``);
:func:`aggregate` gives one :class:`VariantRow` per variant (mean ± sample std over seeds),
:func:`compare_pairs` one :class:`PairResult` per pair (the paired difference with its 95%
interval and verdict, :mod:`xsam.train.stats`); :func:`format_table` and :func:`format_pairs`
are their markdown; :func:`report_comparison` writes the whole report of a folder. The records
are typed dicts: JSON as they are, and what ``results.json`` holds.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import torch

from .checkpoint import CONFIG, RUN_INFO, atomic_write_text, read_metrics, run_status
from .compare_plan import MANIFEST, RESULTS_JSON, RESULTS_MD
from .compare_plots import PLOTS_SKIPPED, plot_runs, plotting_available
from .compare_run import FailedRun, cpu_count
from .config import ConfigError, TrainConfig
from .stats import MINUS, format_points, mean_std, paired_difference, verdict, verdict_line

__all__ = [
    "PLOTS_SKIPPED",
    "RUNS_FILE",
    "ComparisonResult",
    "Difference",
    "PairResult",
    "RunRecord",
    "VariantRow",
    "aggregate",
    "compare_pairs",
    "consolidate_runs",
    "format_pairs",
    "format_table",
    "load_runs",
    "mean_std",
    "plot_runs",
    "plotting_available",
    "read_runs_file",
    "report_comparison",
    "results_markdown",
    "run_info",
    "run_threads",
]

MeanStd = tuple[float, float]


class RunRecord(TypedDict):
    """One run of a comparison as read back: its variant ``label``, ``seed``, run folder
    ``dir``, saved ``config`` (``None`` before it started), per-epoch ``metrics`` and whether
    it is ``complete``."""

    label: str
    seed: int
    dir: str
    config: TrainConfig | None
    metrics: list[dict[str, Any]]
    complete: bool


class VariantRow(TypedDict):
    """One variant over its complete runs (accuracies in %, ``(mean, sample std)``):
    ``n`` runs of ``planned``, their ``seeds``; ``final_val_acc`` is ``None`` unless every
    run has a validation set, ``alpha`` unless a run logged α."""

    label: str
    n: int
    planned: int
    seeds: list[int]
    final_acc: MeanStd
    best_acc: MeanStd
    final_val_acc: MeanStd | None
    wall_s: MeanStd
    alpha: MeanStd | None


class Difference(TypedDict):
    """A paired difference ``b − a`` in points (:func:`xsam.train.stats.paired_difference`):
    ``mean`` (``None`` without a common seed), the 95% interval ``lo``–``hi``, ``sd`` and
    ``t`` (``None`` with fewer than two seeds), its ``verdict`` and one-sentence ``line``."""

    mean: float | None
    lo: float | None
    hi: float | None
    sd: float | None
    t: float | None
    verdict: str
    line: str


class PairResult(TypedDict):
    """The pair ``(label_a, label_b)`` over the ``n`` ``seeds`` both completed: the
    difference of the ``final`` and of the ``best`` test accuracy."""

    label_a: str
    label_b: str
    n: int
    seeds: list[int]
    final: Difference
    best: Difference


class ComparisonResult(TypedDict):
    """What :func:`~xsam.train.compare.run_compare` returns: the ``rows`` and their markdown
    ``table``, the ``pairs``, the ``files`` written and the ``failed`` runs."""

    rows: list[VariantRow]
    table: str
    pairs: list[PairResult]
    files: list[str]
    failed: list[FailedRun]


def compare_pairs(runs: Sequence[RunRecord], pairs: Sequence[tuple[str, str]]) -> list[PairResult]:
    """For every ``(a, b)``: the paired difference ``b − a`` of the final and of the best
    test accuracy (points), over the seeds both completed, with its 95% interval and verdict:
    a :class:`PairResult` per pair, its ``final`` and ``best`` a :class:`Difference` (see
    :mod:`xsam.train.stats`)."""
    done: dict[str, dict[int, RunRecord]] = {}
    for r in runs:
        if r["complete"] and r["metrics"]:
            done.setdefault(r["label"], {})[r["seed"]] = r
    out = []
    for a, b in pairs:
        ra, rb = done.get(a, {}), done.get(b, {})
        seeds = [s for s in ra if s in rb]
        final = _difference(
            [_final_acc(ra[s]) for s in seeds], [_final_acc(rb[s]) for s in seeds], a, b
        )
        best = _difference(
            [_best_acc(ra[s]) for s in seeds], [_best_acc(rb[s]) for s in seeds], a, b
        )
        out.append(
            {
                "label_a": a,
                "label_b": b,
                "n": len(seeds),
                "seeds": seeds,
                "final": final,
                "best": best,
            }
        )
    return out


def _difference(xa: Sequence[float], xb: Sequence[float], a: str, b: str) -> Difference:
    diff = paired_difference(xa, xb)
    return {
        "mean": diff["mean"],
        "lo": diff["lo"],
        "hi": diff["hi"],
        "sd": diff["sd"],
        "t": diff["t"],
        "verdict": verdict(diff, a, b),
        "line": verdict_line(diff, a, b),
    }


def _final_acc(run: RunRecord) -> float:
    return 100.0 * run["metrics"][-1]["test_acc"]


def _best_acc(run: RunRecord) -> float:
    return 100.0 * max(m["test_acc"] for m in run["metrics"])


def format_pairs(pairs: Sequence[PairResult]) -> str:
    """The paired differences as a markdown table (final and best test accuracy)."""

    def cell(d: Difference, n: int) -> str:
        if n == 0:
            return "–"
        if d["lo"] is None:
            return f"{format_points(d['mean'])} (no interval)"
        return f"{format_points(d['mean'])} [{format_points(d['lo'])}, {format_points(d['hi'])}]"

    lines = [
        f"| B {MINUS} A | seeds | final test acc (points) | verdict "
        "| best test acc (points) | verdict |",
        "|---|---:|---:|---|---:|---|",
    ]
    for p in pairs:
        f, b = p["final"], p["best"]
        lines.append(
            f"| {p['label_b']} {MINUS} {p['label_a']} | {p['n']} | {cell(f, p['n'])} "
            f"| {f['verdict']} | {cell(b, p['n'])} | {b['verdict']} |"
        )
    return "\n".join(lines)


def report_comparison(
    base: TrainConfig,
    seeds: Sequence[int],
    out_dir: str | Path,
    pairs: Sequence[tuple[str, str]],
    failed: Sequence[FailedRun] = (),
    *,
    plots: bool = True,
) -> ComparisonResult:
    """Read the runs of the comparison folder ``out_dir`` back and write its report:
    ``results.md``, ``results.json`` (``{"rows", "pairs", "failed"}``) and, with ``plots``,
    ``test_acc.png`` / ``alpha.png`` (a note on stderr when matplotlib is missing)."""
    out_dir = Path(out_dir)
    runs = load_runs(out_dir)
    rows = aggregate(runs)
    table = format_table(rows)
    paired = compare_pairs(runs, pairs)
    files = [out_dir / RESULTS_MD, out_dir / RESULTS_JSON]
    atomic_write_text(
        out_dir / RESULTS_MD, results_markdown(base, seeds, table, runs, paired, failed)
    )
    numbers = {"rows": rows, "pairs": paired, "failed": list(failed)}
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(numbers, indent=2) + "\n")
    if plots:
        files += plot_runs(runs, out_dir)
        if not plotting_available():
            print(f"xsam: {PLOTS_SKIPPED}", file=sys.stderr)
    return {
        "rows": rows,
        "table": table,
        "pairs": paired,
        "files": [str(f) for f in files],
        "failed": list(failed),
    }


# ---------------------------------------------------------------------- aggregation
RUNS_FILE = "runs.jsonl"
"""A comparison's run folders in one file: one JSON object per run, ``{"dir", "label",
"seed", "config", "run", "metrics"}`` (``dir`` the run folder's name in the comparison
folder; ``config``, ``run`` and ``metrics`` the contents of its ``config.json``, ``run.json``
and ``metrics.jsonl``, ``None`` / ``[]`` where a file is missing). Written by
:func:`consolidate_runs`; :func:`load_runs` and :func:`run_threads` read a run from it when
the run's folder is gone."""


def consolidate_runs(out_dir: str | Path) -> Path:
    """Write :data:`RUNS_FILE` for the comparison folder ``out_dir``: every run its
    ``compare.json`` names, read from the run folder (which is left as it is), or kept from
    the earlier :data:`RUNS_FILE` where the folder is gone."""
    out_dir = Path(out_dir)
    files = _RunsFiles()
    lines = []
    for entry in _manifest(out_dir)["runs"]:
        run_dir = out_dir / entry["dir"]
        earlier = None if run_dir.exists() else files.get(run_dir)
        saved = earlier or {
            "dir": entry["dir"],
            "label": entry["label"],
            "seed": entry["seed"],
            "config": _json_or_none(run_dir / CONFIG),
            "run": _json_or_none(run_dir / RUN_INFO),
            "metrics": read_metrics(run_dir),
        }
        lines.append(json.dumps(saved) + "\n")
    path = out_dir / RUNS_FILE
    atomic_write_text(path, "".join(lines))
    return path


def read_runs_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """The lines of a :data:`RUNS_FILE`, by run folder name."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            saved = json.loads(line)
            out[Path(saved["dir"]).name] = saved
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read {path} (line {i}): {exc}") from exc
    return out


class _RunsFiles:
    """The :data:`RUNS_FILE` of each comparison folder a run is in, each read once."""

    def __init__(self) -> None:
        self._files: dict[Path, dict[str, dict[str, Any]]] = {}

    def get(self, run_dir: Path) -> dict[str, Any] | None:
        """The saved run of a run folder that is gone (``None`` when not saved either)."""
        grid = run_dir.parent
        if grid not in self._files:
            path = grid / RUNS_FILE
            self._files[grid] = read_runs_file(path) if path.is_file() else {}
        return self._files[grid].get(run_dir.name)


def load_runs(out_dir: str | Path) -> list[RunRecord]:
    """The runs of a comparison folder (from ``compare.json``), each a :class:`RunRecord`,
    read from the run folders or, for those that are gone, from the :data:`RUNS_FILE` of the
    folder they were in. ``out_dir`` may also be a :data:`RUNS_FILE` itself."""
    out_dir = Path(out_dir)
    if out_dir.is_file():
        saved = read_runs_file(out_dir).values()
        return [_record(out_dir.parent / s["dir"], s["label"], s["seed"], s) for s in saved]
    files = _RunsFiles()
    runs: list[RunRecord] = []
    for entry in _manifest(out_dir)["runs"]:
        run_dir = out_dir / entry["dir"]
        saved = None if run_dir.exists() else files.get(run_dir)
        runs.append(_record(run_dir, entry["label"], entry["seed"], saved))
    return runs


def _manifest(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{out_dir} is not a comparison folder (no readable {MANIFEST})") from exc


def _record(run_dir: Path, label: str, seed: int, saved: dict[str, Any] | None) -> RunRecord:
    """A run read from its folder, or from its line of a :data:`RUNS_FILE` (``saved``)."""
    if saved is None:
        status, config, _ = run_status(run_dir)
        metrics = read_metrics(run_dir)
        complete = status == "complete"
    else:  # complete as run_status judges it: as many epochs finished as configured
        config = None if saved["config"] is None else TrainConfig.from_dict(saved["config"])
        metrics = saved["metrics"]
        complete = config is not None and len(metrics) >= config.epochs
    return {
        "label": label,
        "seed": seed,
        "dir": str(run_dir),
        "config": config,
        "metrics": metrics,
        "complete": complete,
    }


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def aggregate(runs: Sequence[RunRecord]) -> list[VariantRow]:
    """One :class:`VariantRow` per variant label (in first-seen order) over its complete
    runs: ``n``, ``final_acc`` / ``best_acc`` / ``wall_s`` / ``alpha`` as ``(mean, std)``, and
    ``final_val_acc`` (``None`` unless every run has a validation set); accuracies in %."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    rows: list[VariantRow] = []
    for label in labels:
        done = [r for r in runs if r["label"] == label and r["complete"] and r["metrics"]]
        finals = [100.0 * r["metrics"][-1]["test_acc"] for r in done]
        bests = [100.0 * max(m["test_acc"] for m in r["metrics"]) for r in done]
        vals = [100.0 * r["metrics"][-1]["val_acc"] for r in done if _has_val(r)]
        walls = [r["metrics"][-1]["wall_s"] for r in done]
        alphas = [
            r["metrics"][-1]["alpha"] for r in done if r["metrics"][-1].get("alpha") is not None
        ]
        rows.append(
            {
                "label": label,
                "n": len(done),
                "planned": sum(r["label"] == label for r in runs),
                "seeds": [r["seed"] for r in done],
                "final_acc": mean_std(finals),
                "best_acc": mean_std(bests),
                "final_val_acc": mean_std(vals) if vals and len(vals) == len(done) else None,
                "wall_s": mean_std(walls),
                "alpha": mean_std(alphas) if alphas else None,
            }
        )
    return rows


def _has_val(run: RunRecord) -> bool:
    return run["metrics"][-1].get("val_acc") is not None


def _pm(ms: Sequence[float] | None, n: int, digits: int) -> str:
    if ms is None or n == 0 or math.isnan(ms[0]):
        return "–"
    mean, std = ms
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table: mean ± std (sample std) over the seeds of each variant, with a
    validation accuracy column when some variant has a validation set. ``rows``:
    :class:`VariantRow` s, or the ``"rows"`` of a ``results.json``."""
    val = any(r.get("final_val_acc") is not None for r in rows)
    lines = [
        "| optimizer | runs | "
        + ("final val acc (%) | " if val else "")
        + "final test acc (%) | best test acc (%) | final α | wall time (s) |",
        "|---|---:|" + ("---:|" if val else "") + "---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["n"]
        runs = f"{n}" if n == r["planned"] else f"{n} of {r['planned']}"
        lines.append(
            f"| {r['label']} | {runs} | "
            + (f"{_pm(r.get('final_val_acc'), n, 2)} | " if val else "")
            + f"{_pm(r['final_acc'], n, 2)} | {_pm(r['best_acc'], n, 2)} "
            f"| {_pm(r['alpha'], n, 2)} | {_pm(r['wall_s'], n, 1)} |"
        )
    return "\n".join(lines)


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {cpu_count()} CPUs, torch {torch.__version__}"


def run_info(run_dir: str | Path, files: _RunsFiles | None = None) -> dict[str, Any] | None:
    """A run's ``run.json`` (the machine, threads and data it ran with), from its folder or,
    when the folder is gone, from the :data:`RUNS_FILE` beside it; ``None`` when there is
    none or it cannot be read."""
    run_dir = Path(run_dir)
    try:
        if run_dir.exists():
            return json.loads((run_dir / RUN_INFO).read_text())
        saved = (files or _RunsFiles()).get(run_dir)
    except (OSError, json.JSONDecodeError, ConfigError):
        return None
    return None if saved is None else saved["run"]


def run_threads(runs: Sequence[RunRecord]) -> list[int]:
    """The CPU thread counts the runs recorded in their ``run.json`` (sorted, distinct)."""
    found = set()
    files = _RunsFiles()
    for r in runs:
        info = run_info(r["dir"], files) or {}
        if isinstance(info.get("threads"), int):
            found.add(info["threads"])
    return sorted(found)


def _threads_line(runs: Sequence[RunRecord]) -> str:
    threads = run_threads(runs)
    if not threads:
        return ""
    text = " or ".join(map(str, threads))
    return f"- CPU threads per run: {text} (as each run recorded it)\n"


def results_markdown(
    base: TrainConfig,
    seeds: Sequence[int],
    table: str,
    runs: Sequence[RunRecord],
    pairs: Sequence[PairResult] = (),
    failed: Sequence[FailedRun] = (),
) -> str:
    """``results.md``: what was compared, the table, the paired differences, the failed runs,
    the command, the machine, the threads, the date and the run folders."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "# Optimizer comparison\n\n"
        f"{_setting(base)}; mean ± sample std over seeds {', '.join(map(str, seeds))}.\n\n"
        f"{table}\n\n"
        f"{_pairs_section(pairs)}"
        f"{_failures_section(failed)}"
        f"- command: `{' '.join(['xsam', *sys.argv[1:]])}`\n"
        f"- machine: {platform.node()}, {_machine()}\n"
        f"{_threads_line(runs)}"
        f"- date: {when}\n"
        f"- runs: {', '.join(Path(r['dir']).name for r in runs)}\n"
    )


def _setting(base: TrainConfig) -> str:
    b = base.validated()
    return (
        f"{b.dataset}, {b.model}, {b.epochs} epochs, batch {b.batch_size}, {b.base} lr {b.lr:g}, "
        f"{b.schedule} schedule, augment {b.augment}"
        + (f", preset {b.preset}" if b.preset else "")
        + (f", {b.val_size} training examples held out for validation" if b.val_size else "")
        + (f", {b.limit_train} training examples" if b.limit_train else "")
    )


def _pairs_section(pairs: Sequence[PairResult]) -> str:
    if not pairs:
        return ""
    return (
        "## Paired differences (95% CI, t over seeds)\n\n"
        f"B {MINUS} A in test accuracy points, seed by seed (the same seed: the same "
        "initialisation and data order), over the seeds both completed: the mean and a 95% "
        "confidence interval from Student's t with n − 1 degrees of freedom. A variant is "
        "*better* only when the interval excludes 0.\n\n"
        f"{format_pairs(pairs)}\n\n"
    )


def _failures_section(failed: Sequence[FailedRun]) -> str:
    if not failed:
        return ""
    lines = "".join(f"- {f['label']} seed {f['seed']} ({f['dir']}): {f['error']}\n" for f in failed)
    return f"## Failed runs\n\n{lines}\n"
