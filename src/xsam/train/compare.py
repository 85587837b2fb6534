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
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import torch

from ..data import DataError
from .checkpoint import atomic_write_text, read_metrics, run_status
from .config import OPTIMIZERS, ConfigError, TrainConfig, apply_overrides
from .loop import RESUME_FREE_KEYS, train
from .stats import MINUS, format_points, paired_difference, verdict, verdict_line

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
]

MANIFEST, RESULTS_MD, RESULTS_JSON = "compare.json", "results.md", "results.json"
PLOT_ACC, PLOT_ALPHA = "test_acc.png", "alpha.png"
RESULT_FILES = (RESULTS_MD, RESULTS_JSON, PLOT_ACC, PLOT_ALPHA)


@dataclass(frozen=True)
class Variant:
    """An optimizer setting to compare: ``label`` (as the user wrote it) and overrides."""

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The label made safe as a folder name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label.replace("=", "")).strip("_")


@dataclass(frozen=True)
class PlannedRun:
    variant: Variant
    seed: int
    config: TrainConfig

    @property
    def out(self) -> Path:
        assert self.config.out is not None
        return Path(self.config.out)


def parse_variants(specs: Iterable[str]) -> list[Variant]:
    """``"sgd"``, ``"sam:rho=0.05"``, ``"xsam:steps=2,alpha=auto"`` -> :class:`Variant`."""
    variants: list[Variant] = []
    for spec in specs:
        spec = spec.strip()
        name, _, rest = spec.partition(":")
        name = name.strip().lower()
        if name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")
        overrides: dict[str, Any] = {"optimizer": name}
        for item in filter(None, (t.strip() for t in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"optimizer variant {spec!r}: expected key=value, got {item!r}")
            overrides[key.strip().replace("-", "_")] = value.strip()
        apply_overrides(TrainConfig(), overrides)  # unknown keys and bad values fail here
        label = name + (":" + rest.strip() if rest.strip() else "")
        if any(v.label == label for v in variants):
            raise ConfigError(f"optimizer variant {label!r} is listed twice")
        variants.append(Variant(label, overrides))
    if not variants:
        raise ConfigError("no optimizers to compare")
    return variants


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> a list of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in filter(None, (t.strip() for t in text.split(","))):
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"seeds should look like '0,1,2' or '0-4' but are: {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds should be distinct integers >= 0 but are: {text!r}")
    return seeds


def plan_runs(
    base: TrainConfig, variants: Sequence[Variant], seeds: Sequence[int], out_dir: str | Path
) -> list[PlannedRun]:
    """Every (variant, seed) run, validated, each in ``out_dir/<variant>-seed<seed>``."""
    out_dir = Path(out_dir)
    plan = []
    for v in variants:
        for seed in seeds:
            overrides = {**v.overrides, "seed": seed, "out": str(out_dir / f"{v.slug}-seed{seed}")}
            plan.append(PlannedRun(v, seed, apply_overrides(base, overrides).validated()))
    return plan


def _check_existing(plan: Sequence[PlannedRun]) -> None:
    """Refuse (before training anything) to reuse a run folder made with another config."""
    for run in plan:
        status, saved, _ = run_status(run.out)
        if status == "foreign":
            raise ConfigError(f"{run.out} is not empty and holds no run; choose another --out")
        if saved is None or status == "started":
            continue
        a, b = saved.validated().to_dict(), run.config.to_dict()
        diff = [
            f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUME_FREE_KEYS and a[k] != b[k]
        ]
        if diff:
            raise ConfigError(
                f"{run.out} holds a run with another config ({'; '.join(diff)}); pass --force "
                "to redo it or choose another --out"
            )


def check_jobs(jobs: object) -> int:
    """``jobs`` as an integer >= 1, or :class:`ConfigError`."""
    try:
        n = int(str(jobs))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"jobs should be an integer >= 1 but is: {jobs!r}")
    return n


def prepare_comparison(
    base: TrainConfig, plan: Sequence[PlannedRun], out_dir: str | Path, *, force: bool = False
) -> None:
    """Before training: refuse folders of other runs (unless ``force``), write the plan
    (``compare.json``) and delete the earlier comparison's results and plots."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output folder {out_dir} exists and is not a folder")
    if not force:
        _check_existing(plan)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "runs": [{"label": r.variant.label, "seed": r.seed, "dir": r.out.name} for r in plan],
            "base": base.to_dict(),
        }
        atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        for name in RESULT_FILES:  # an earlier comparison's: written anew at the end
            (out_dir / name).unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot write to output folder {out_dir}: {exc.strerror or exc}"
        ) from None


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
) -> dict[str, Any]:
    """Train the grid (skipping complete runs, resuming stopped ones; ``force`` redoes all;
    ``jobs`` runs at a time, see :func:`train_plan`), then aggregate, compare the ``pairs``
    (``(label_a, label_b)``: ``b − a``, or ``--pairs`` text; default (:func:`default_pairs`):
    every pair of up to four variants, ``b`` listed
    after ``a``) and write the table and plots. Returns ``{"rows", "table", "pairs",
    "files", "failed"}``.

    Raises :class:`RunsFailed` (after writing the results of the other runs) when a run of a
    parallel comparison failed."""
    out_dir = Path(out_dir)
    jobs = check_jobs(jobs)
    labels = [v.label for v in variants]
    chosen = parse_pairs(pairs, labels) if isinstance(pairs, str) else check_pairs(pairs, labels)
    plan = plan_runs(base, variants, seeds, out_dir)
    prepare_comparison(base, plan, out_dir, force=force)
    failed = train_plan(plan, force=force, jobs=jobs, log=log, progress=progress)
    runs = load_runs(out_dir)
    rows = aggregate(runs)
    table = format_table(rows)
    paired = compare_pairs(runs, chosen)
    files = [out_dir / RESULTS_MD, out_dir / RESULTS_JSON]
    atomic_write_text(
        out_dir / RESULTS_MD, _results_markdown(base, seeds, table, runs, paired, failed)
    )
    numbers = {"rows": rows, "pairs": paired, "failed": failed}
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(numbers, indent=2) + "\n")
    if plots:
        files += plot_runs(runs, out_dir)
        if not plotting_available():
            print(f"xsam: {PLOTS_SKIPPED}", file=sys.stderr)
    result = {
        "rows": rows,
        "table": table,
        "pairs": paired,
        "files": [str(f) for f in files],
        "failed": failed,
    }
    if failed:
        raise RunsFailed(failed, result)
    return result


# ---------------------------------------------------------------------- training the grid
class RunsFailed(Exception):
    """Runs of a parallel comparison failed; the others finished and were reported.
    ``failed``: ``[{"label", "seed", "dir", "error"}]``; ``result``: what
    :func:`run_compare` would have returned (``None`` where the caller wrote no results)."""

    def __init__(self, failed: list[dict[str, Any]], result: dict[str, Any] | None = None):
        self.failed, self.result = failed, result
        names = "; ".join(f"{f['label']} seed {f['seed']}: {f['error']}" for f in failed)
        super().__init__(f"{len(failed)} run(s) failed ({names})")


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def train_plan(
    plan: Sequence[PlannedRun],
    *,
    force: bool = False,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    epoch_lines: bool = True,
) -> list[dict[str, Any]]:
    """Train the runs of ``plan`` that are not complete (all with ``force``), resuming the
    stopped ones. With ``jobs = 1`` one after another in this process (a failure raises at
    once); with ``jobs > 1`` up to ``jobs`` at a time, each in its own process (spawned:
    nothing is shared but the files), with ``threads = max(1, cpus // jobs)`` where the
    config leaves ``threads`` unset, one log line per run start and finish, and the failures
    returned (``[{"label", "seed", "dir", "error"}]``) after the other runs finished.
    ``epoch_lines``: pass the runs' per-epoch lines to ``log`` (sequential runs only).

    As with any spawned process, a script calling this with ``jobs > 1`` must do so under
    ``if __name__ == "__main__":`` (the workers import the script's main module)."""
    jobs = check_jobs(jobs)
    say = log or (lambda s: None)
    todo: list[tuple[str, PlannedRun, str]] = []
    for i, run in enumerate(plan, 1):
        status, _, done = run_status(run.out)
        head = f"[{i}/{len(plan)}] {run.variant.label} seed {run.seed}"
        if status == "complete" and not force:
            say(f"{head}: complete, skipped ({run.out})")
            continue
        what = f"resuming after epoch {done}" if status == "partial" and not force else "training"
        todo.append((head, run, what))
        if jobs == 1:
            say(f"{head}: {what} -> {run.out}")
            train(
                run.config,
                resume=not force,
                force=force,
                log=log if epoch_lines else None,
                progress=progress,
            )
    if jobs == 1 or not todo:
        return []
    return _train_parallel(todo, jobs=jobs, force=force, say=say)


def _train_parallel(
    todo: Sequence[tuple[str, PlannedRun, str]],
    *,
    jobs: int,
    force: bool,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Each run in a fresh spawned process (never reused: no state carries over from one run
    to the next), at most ``jobs`` at a time; an interrupt terminates them (every finished
    epoch is saved, so the same command resumes them)."""
    threads = max(1, cpu_count() // jobs)
    queue = list(todo)
    failed: list[dict[str, Any]] = []
    ctx = multiprocessing.get_context("spawn")
    running: dict[Any, tuple[str, PlannedRun, Any, Any]] = {}  # sentinel -> run, process, pipe

    def fail(head: str, run: PlannedRun, error: str) -> None:
        say(f"{head}: FAILED: {error}")
        failed.append({"label": run.variant.label, "seed": run.seed, "dir": str(run.out),
                       "error": error})  # fmt: skip

    try:
        while queue or running:
            while queue and len(running) < jobs:
                head, run, what = queue.pop(0)
                config = run.config
                if config.threads is None:
                    config = config.replace(threads=threads)
                threads_s = f"{config.threads} thread" + ("s" if config.threads != 1 else "")
                say(f"{head}: {what} ({threads_s}) -> {run.out}")
                receiver, sender = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_train_worker, args=(sender, config, force), name=f"xsam {head}"
                )
                process.start()
                sender.close()  # the child's end: EOF here once the child is gone
                running[process.sentinel] = (head, run, process, receiver)
            for sentinel in mp_connection.wait(list(running)):
                head, run, process, receiver = running.pop(sentinel)
                process.join()
                outcome = receiver.recv() if receiver.poll() else None
                receiver.close()
                if outcome is None:
                    fail(head, run, f"the worker process ended with exit code {process.exitcode}")
                elif outcome.get("error"):
                    fail(head, run, outcome["error"])
                else:
                    done = outcome["epochs_done"]
                    say(f"{head}: done ({done} epoch{'s' if done != 1 else ''}, "
                        f"{outcome['wall_s']:.1f} s)")  # fmt: skip
    except BaseException:  # an interrupt: stop the workers too
        _stop([process for _, _, process, _ in running.values()])
        raise
    return failed


def _stop(processes: Sequence[Any]) -> None:
    """End worker processes: an interrupt (the ones started from a terminal have had one),
    then, for those still running after a few seconds, SIGTERM."""
    deadline = time.monotonic() + 2.0
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        try:
            os.kill(process.pid, signal.SIGINT)
        except (OSError, AttributeError, ValueError):
            pass
    deadline = time.monotonic() + 5.0
    for process in alive:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join(timeout=5.0)


def _train_worker(conn: Any, config: TrainConfig, force: bool) -> None:
    """One run in a worker process; sends a summary, or ``{"error": ...}`` (one line)."""
    try:
        result = train(config, resume=not force, force=force)
        outcome = {k: result[k] for k in ("complete", "epochs_done", "wall_s", "resumed_from")}
    except (ConfigError, DataError) as exc:
        outcome = {"error": _one_line(exc)}
    except KeyboardInterrupt:
        outcome = {"error": "interrupted"}
    except Exception as exc:
        traceback.print_exc()  # an unexpected error: the whole story on stderr
        outcome = {"error": _one_line(f"{type(exc).__name__}: {exc}")}
    try:
        conn.send(outcome)
        conn.close()
    except OSError:  # the parent is gone (interrupted)
        pass


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


# ---------------------------------------------------------------------- pairs
def parse_pairs(text: str | None, labels: Sequence[str]) -> list[tuple[str, str]]:
    """``--pairs`` text, e.g. ``"xsam-sam,sam-sgd"`` (each ``B-A``, labels as in
    ``--optimizers``) -> ``[(a, b), ...]`` for the differences ``b − a``: ``[("sam", "xsam"),
    ("sgd", "sam")]``. ``None`` or empty: :func:`default_pairs`. Labels may hold
    ``-`` and ``,``; case and spaces do not matter."""
    if text is None or not text.strip():
        return default_pairs(labels)

    def norm(s: str) -> str:
        return re.sub(r"\s+", "", s).lower().replace(MINUS, "-")

    keys = sorted({norm(lb): lb for lb in labels}.items(), key=lambda kv: -len(kv[0]))
    t = norm(text).strip(",")
    if not t:
        raise ConfigError("--pairs names no pair")

    def parse(i: int) -> list[tuple[str, str]] | None:
        for kb, lb in keys:
            j = i + len(kb)
            if not (t.startswith(kb, i) and t.startswith("-", j)):
                continue
            for ka, la in keys:
                k = j + 1 + len(ka)
                if t.startswith(ka, j + 1) and (k == len(t) or t[k] == ","):
                    rest = [] if k == len(t) else parse(k + 1)
                    if rest is not None:
                        return [(la, lb), *rest]
        return None

    found = parse(0)
    if found is None:
        raise ConfigError(_pairs_error(text, labels, norm))
    return check_pairs(found, labels)


def _pairs_error(text: str, labels: Sequence[str], norm: Callable[[str], str]) -> str:
    known = {norm(lb) for lb in labels}
    accepted = f"the labels are: {', '.join(labels)}"
    for item in filter(None, (p.strip() for p in text.replace(MINUS, "-").split(","))):
        if "-" not in item:
            return f"--pairs item {item!r} should be B-A (two labels joined by '-'); {accepted}"
        cuts = [m.start() for m in re.finditer("-", item)]
        if any(norm(item[:c]) in known and norm(item[c + 1 :]) in known for c in cuts):
            continue
        unknown = next(
            (item[c + 1 :].strip() for c in cuts if norm(item[:c]) in known),
            next((item[:c].strip() for c in cuts if norm(item[c + 1 :]) in known), None),
        )
        if unknown is None:
            unknown = item[: cuts[0]].strip()
        return f"unknown label {unknown!r} in --pairs; {accepted}"
    return f"cannot read --pairs {text!r} as B-A,B-A,...; {accepted}"


ALL_PAIRS_UP_TO = 4
"""Up to this many variants every pair is compared by default; beyond, each variant against
the first (the baseline), so that a sweep does not print dozens of lines."""


def default_pairs(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair ``(a, b)`` with ``b`` listed after ``a`` (the difference ``b − a``) for up
    to :data:`ALL_PAIRS_UP_TO` variants; with more, ``(first, b)`` for every later ``b``."""
    if len(labels) > ALL_PAIRS_UP_TO:
        return [(labels[0], b) for b in labels[1:]]
    return [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]


def check_pairs(
    pairs: Sequence[tuple[str, str]] | None, labels: Sequence[str]
) -> list[tuple[str, str]]:
    """``pairs`` validated against ``labels`` (``None``: :func:`default_pairs`)."""
    if pairs is None:
        return default_pairs(labels)
    seen: set[tuple[str, str]] = set()
    out = []
    for a, b in pairs:
        for label in (a, b):
            if label not in labels:
                raise ConfigError(
                    f"unknown label {label!r} in --pairs; the labels are: {', '.join(labels)}"
                )
        if a == b:
            raise ConfigError(f"--pairs: {b}-{a} compares a variant with itself")
        if (a, b) in seen:
            raise ConfigError(f"--pairs: {b}-{a} is listed twice")
        seen.add((a, b))
        out.append((a, b))
    if not out:
        raise ConfigError("--pairs names no pair")
    return out


def compare_pairs(
    runs: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]]
) -> list[dict[str, Any]]:
    """For every ``(a, b)``: the paired difference ``b − a`` of the final and of the best
    test accuracy (points), over the seeds both completed, with its 95% interval and verdict:
    ``{"label_a", "label_b", "n", "seeds", "final": {...}, "best": {...}}``, each of the two
    ``{"mean", "lo", "hi", "sd", "t", "verdict", "line"}`` (see :mod:`xsam.train.stats`)."""
    done: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        if r["complete"] and r["metrics"]:
            done.setdefault(r["label"], {})[r["seed"]] = r
    out = []
    for a, b in pairs:
        ra, rb = done.get(a, {}), done.get(b, {})
        seeds = [s for s in ra if s in rb]
        entry: dict[str, Any] = {"label_a": a, "label_b": b, "n": len(seeds), "seeds": seeds}
        for key, value in (("final", _final_acc), ("best", _best_acc)):
            diff = paired_difference([value(ra[s]) for s in seeds], [value(rb[s]) for s in seeds])
            entry[key] = {
                **{k: diff[k] for k in ("mean", "lo", "hi", "sd", "t")},
                "verdict": verdict(diff, a, b),
                "line": verdict_line(diff, a, b),
            }
        out.append(entry)
    return out


def _final_acc(run: dict[str, Any]) -> float:
    return 100.0 * run["metrics"][-1]["test_acc"]


def _best_acc(run: dict[str, Any]) -> float:
    return 100.0 * max(m["test_acc"] for m in run["metrics"])


def format_pairs(pairs: Sequence[dict[str, Any]]) -> str:
    """The paired differences as a markdown table (final and best test accuracy)."""

    def cell(d: dict[str, Any], n: int) -> str:
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


# ---------------------------------------------------------------------- aggregation
def load_runs(out_dir: str | Path) -> list[dict[str, Any]]:
    """The runs of a comparison folder (from ``compare.json``), each ``{"label", "seed",
    "dir", "config", "metrics", "complete"}``."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{out_dir} is not a comparison folder (no readable {MANIFEST})") from exc
    runs = []
    for entry in manifest["runs"]:
        run_dir = out_dir / entry["dir"]
        status, config, _ = run_status(run_dir)
        runs.append(
            {
                "label": entry["label"],
                "seed": entry["seed"],
                "dir": str(run_dir),
                "config": config,
                "metrics": read_metrics(run_dir),
                "complete": status == "complete",
            }
        )
    return runs


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n − 1`` in the denominator; 0 for one value)."""
    if not values:
        return math.nan, math.nan
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant label (in first-seen order) over its complete runs: ``n``,
    ``final_acc`` / ``best_acc`` / ``wall_s`` / ``alpha`` as ``(mean, std)``, and
    ``final_val_acc`` (``None`` unless every run has a validation set); accuracies in %."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    rows = []
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


def _has_val(run: dict[str, Any]) -> bool:
    return run["metrics"][-1].get("val_acc") is not None


def _pm(ms: tuple[float, float] | None, n: int, digits: int) -> str:
    if ms is None or n == 0 or math.isnan(ms[0]):
        return "–"
    mean, std = ms
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table: mean ± std (sample std) over the seeds of each variant, with a
    validation accuracy column when some variant has a validation set."""
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


def run_threads(runs: Sequence[dict[str, Any]]) -> list[int]:
    """The CPU thread counts the runs recorded in their ``run.json`` (sorted, distinct)."""
    found = set()
    for r in runs:
        try:
            info = json.loads((Path(r["dir"]) / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(info.get("threads"), int):
            found.add(info["threads"])
    return sorted(found)


def _threads_line(runs: Sequence[dict[str, Any]]) -> str:
    threads = run_threads(runs)
    if not threads:
        return ""
    text = " or ".join(map(str, threads))
    return f"- CPU threads per run: {text} (as each run recorded it)\n"


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


def _results_markdown(
    base: TrainConfig,
    seeds: Sequence[int],
    table: str,
    runs: Sequence[dict[str, Any]],
    pairs: Sequence[dict[str, Any]] = (),
    failed: Sequence[dict[str, Any]] = (),
) -> str:
    b = base.validated()
    what = (
        f"{b.dataset}, {b.model}, {b.epochs} epochs, batch {b.batch_size}, {b.base} lr {b.lr:g}, "
        f"{b.schedule} schedule, augment {b.augment}"
        + (f", preset {b.preset}" if b.preset else "")
        + (f", {b.val_size} training examples held out for validation" if b.val_size else "")
        + (f", {b.limit_train} training examples" if b.limit_train else "")
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    paired = (
        "## Paired differences (95% CI, t over seeds)\n\n"
        f"B {MINUS} A in test accuracy points, seed by seed (the same seed: the same "
        "initialisation and data order), over the seeds both completed: the mean and a 95% "
        "confidence interval from Student's t with n − 1 degrees of freedom. A variant is "
        "*better* only when the interval excludes 0.\n\n"
        f"{format_pairs(pairs)}\n\n"
        if pairs
        else ""
    )
    failures = (
        "## Failed runs\n\n"
        + "".join(f"- {f['label']} seed {f['seed']} ({f['dir']}): {f['error']}\n" for f in failed)
        + "\n"
        if failed
        else ""
    )
    return (
        "# Optimizer comparison\n\n"
        f"{what}; mean ± sample std over seeds {', '.join(map(str, seeds))}.\n\n"
        f"{table}\n\n"
        f"{paired}"
        f"{failures}"
        f"- command: `{' '.join(['xsam', *sys.argv[1:]])}`\n"
        f"- machine: {platform.node()}, {_machine()}\n"
        f"{_threads_line(runs)}"
        f"- date: {when}\n"
        f"- runs: {', '.join(Path(r['dir']).name for r in runs)}\n"
    )


# ---------------------------------------------------------------------- plots
def _series(runs: Sequence[dict[str, Any]], label: str, key: str, scale: float = 1.0):
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


def plot_runs(runs: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``test_acc.png`` (test accuracy per epoch, mean and ±1 std band per variant) and, when a
    run logged α, ``alpha.png`` (α per epoch). Returns the files written (none without
    matplotlib)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    except ImportError:
        return []
    out_dir = Path(out_dir)
    labels = list(dict.fromkeys(r["label"] for r in runs))
    written = []
    for key, scale, ylabel, name in (
        ("test_acc", 100.0, "test accuracy (%)", PLOT_ACC),
        ("alpha", 1.0, "α in use at the end of the epoch", PLOT_ALPHA),
    ):
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        ax = fig.add_subplot()
        drawn = False
        for label in labels:
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
        if not drawn:
            continue
        seeds = sorted({r["seed"] for r in runs})
        title = (
            f"seed {seeds[0]}"
            if len(seeds) == 1
            else f"mean ± std over seeds {', '.join(map(str, seeds))}"
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = out_dir / name
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
        written.append(path)
    return written
