"""Compare optimizers over seeds: a grid of runs, a markdown table, paired verdicts and plots.

``run_compare`` trains every (variant, seed) pair in its own subfolder of the comparison
folder, one after another or ``jobs`` at a time in separate processes. Rerunning the same comparison skips the runs that are complete and
resumes the ones that stopped, so an interrupted comparison is continued by running the same
command again. The comparison folder gets ``compare.json`` (the plan), ``results.md`` (the
table, the command and the machine), ``results.json`` (the numbers) and ``test_acc.png`` /
``alpha.png``. Those four are deleted when a comparison starts and written when it ends, so
the folder never shows the results of an earlier comparison as this one's.

Runs are paired: with the same seed every variant starts from the same initialisation and
sees the data in the same order. For every pair of variants (``b`` listed after ``a``, or the
pairs asked for) the results give the per-seed difference ``b − a`` of the final and best test
accuracy with a 95% t interval over the seeds both completed, and a verdict ("xsam better",
"not distinguishable", ...; see :mod:`xsam.train.stats`).

A variant is an optimizer name with optional config overrides, e.g. ``sgd``, ``sam:rho=0.05``
or ``xsam:steps=2,alpha_every=100``.

The work is in three modules, re-exported here: :mod:`~xsam.train.compare_plan` (variants,
seeds, pairs and the run folders), :mod:`~xsam.train.compare_run` (training the plan, in this
process or in worker processes) and :mod:`~xsam.train.compare_report` (the runs read back,
statistics, ``results.md`` / ``results.json`` and the plots).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .compare_plan import (
    ALL_PAIRS_UP_TO,
    MANIFEST,
    PLOT_ACC,
    PLOT_ALPHA,
    RESULT_FILES,
    RESULTS_JSON,
    RESULTS_MD,
    PlannedRun,
    Variant,
    check_jobs,
    check_pairs,
    default_pairs,
    parse_pairs,
    parse_seeds,
    parse_variants,
    plan_runs,
    prepare_comparison,
)
from .compare_report import (
    PLOTS_SKIPPED,
    RUNS_FILE,
    ComparisonResult,
    Difference,
    PairResult,
    RunRecord,
    VariantRow,
    aggregate,
    compare_pairs,
    consolidate_runs,
    format_pairs,
    format_table,
    load_runs,
    mean_std,
    plot_runs,
    plotting_available,
    read_runs_file,
    report_comparison,
    results_markdown,
    run_info,
    run_threads,
)
from .compare_run import FailedRun, RunsFailed, cpu_count, train_plan
from .config import TrainConfig
from .loop import train

__all__ = [
    "PlannedRun",
    "RunsFailed",
    "Variant",
    "aggregate",
    "check_jobs",
    "check_pairs",
    "compare_pairs",
    "default_pairs",
    "format_pairs",
    "format_table",
    "load_runs",
    "mean_std",
    "parse_pairs",
    "parse_seeds",
    "parse_variants",
    "plan_runs",
    "plot_runs",
    "prepare_comparison",
    "run_compare",
    "train_plan",
    # the pieces' other names, importable from here as before the split
    "ALL_PAIRS_UP_TO",
    "MANIFEST",
    "PLOTS_SKIPPED",
    "PLOT_ACC",
    "PLOT_ALPHA",
    "RESULTS_JSON",
    "RESULTS_MD",
    "RESULT_FILES",
    "RUNS_FILE",
    "ComparisonResult",
    "Difference",
    "FailedRun",
    "PairResult",
    "RunRecord",
    "VariantRow",
    "consolidate_runs",
    "cpu_count",
    "plotting_available",
    "read_runs_file",
    "report_comparison",
    "results_markdown",
    "run_info",
    "run_threads",
]


def run_compare(
    base: TrainConfig,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    plots: bool = True,
    jobs: int = 1,
    pairs: str | Sequence[tuple[str, str]] | None = None,
) -> ComparisonResult:
    """Train the grid (skipping complete runs, resuming stopped ones; ``force`` redoes all;
    ``jobs`` runs at a time, see :func:`train_plan`), then aggregate, compare the ``pairs``
    (``(label_a, label_b)``: ``b − a``, or ``--pairs`` text; default (:func:`default_pairs`):
    every pair of up to four variants, ``b`` listed
    after ``a``) and write the table and plots. Returns ``{"rows", "table", "pairs",
    "files", "failed"}`` (:class:`~xsam.train.compare_report.ComparisonResult`).

    Raises :class:`RunsFailed` (after writing the results of the other runs) when a run of a
    parallel comparison failed."""
    out_dir = Path(out_dir)
    jobs = check_jobs(jobs)
    labels = [v.label for v in variants]
    chosen = parse_pairs(pairs, labels) if isinstance(pairs, str) else check_pairs(pairs, labels)
    plan = plan_runs(base, variants, seeds, out_dir)
    prepare_comparison(base, plan, out_dir, force=force)
    failed = train_plan(plan, force=force, jobs=jobs, log=log, progress=progress, train_fn=train)
    result = report_comparison(base, seeds, out_dir, chosen, failed, plots=plots)
    if failed:
        raise RunsFailed(failed, result)
    return result
