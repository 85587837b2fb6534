"""Running a planned comparison: every run not yet complete, in this process or in workers.

:func:`train_plan` trains the runs of a plan (:mod:`xsam.train.compare_plan`) one after another
in this process, or ``jobs`` at a time, each in a fresh spawned process that reports back
through a pipe. An interrupt stops the workers (SIGINT first, then SIGTERM); every finished
epoch is saved, so the same command resumes them. A failed worker run is a
:class:`FailedRun`; the others go on, and :class:`RunsFailed` carries the failures.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from typing import TYPE_CHECKING, Any, TypedDict

from ..data import DataError
from .checkpoint import run_status
from .compare_plan import PlannedRun, check_jobs
from .config import ConfigError, TrainConfig
from .loop import train

if TYPE_CHECKING:
    from .compare_report import ComparisonResult

__all__ = ["FailedRun", "RunsFailed", "cpu_count", "train_plan"]


class FailedRun(TypedDict):
    """A run of a parallel comparison that failed (also an entry of ``results.json``'s
    ``"failed"``): its variant ``label``, ``seed``, run folder ``dir`` and one-line ``error``."""

    label: str
    seed: int
    dir: str
    error: str


class _Outcome(TypedDict, total=False):
    """What a worker sends back: a summary of its run, or only ``error`` (one line)."""

    complete: bool
    epochs_done: int
    wall_s: float
    resumed_from: int | None
    error: str


class RunsFailed(Exception):
    """Runs of a parallel comparison failed; the others finished and were reported.
    ``failed``: the :class:`FailedRun` s; ``result``: what
    :func:`~xsam.train.compare.run_compare` would have returned (``None`` where the caller
    wrote no results)."""

    def __init__(self, failed: list[FailedRun], result: ComparisonResult | None = None):
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
    train_fn: Callable[..., Any] = train,
) -> list[FailedRun]:
    """Train the runs of ``plan`` that are not complete (all with ``force``), resuming the
    stopped ones. With ``jobs = 1`` one after another in this process (a failure raises at
    once); with ``jobs > 1`` up to ``jobs`` at a time, each in its own process (spawned:
    nothing is shared but the files), with ``threads = max(1, cpus // jobs)`` where the
    config leaves ``threads`` unset, one log line per run start and finish, and the failures
    returned (:class:`FailedRun` s) after the other runs finished.
    ``epoch_lines``: pass the runs' per-epoch lines to ``log`` (sequential runs only).
    ``train_fn``: what trains one run in this process (sequential runs; default
    :func:`xsam.train.train`); worker processes always run :func:`xsam.train.train`.

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
            train_fn(
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
) -> list[FailedRun]:
    """Each run in a fresh spawned process (never reused: no state carries over from one run
    to the next), at most ``jobs`` at a time; an interrupt terminates them (every finished
    epoch is saved, so the same command resumes them)."""
    threads = max(1, cpu_count() // jobs)
    queue = list(todo)
    failed: list[FailedRun] = []
    ctx = multiprocessing.get_context("spawn")
    running: dict[Any, _Worker] = {}  # by the process's sentinel
    try:
        while queue or running:
            while queue and len(running) < jobs:
                worker = _start_worker(ctx, *queue.pop(0), threads=threads, force=force, say=say)
                running[worker.process.sentinel] = worker
            for sentinel in mp_connection.wait(list(running)):
                worker = running.pop(sentinel)
                outcome = _outcome(worker)
                if outcome.get("error"):
                    say(f"{worker.head}: FAILED: {outcome['error']}")
                    run = worker.run
                    failed.append({"label": run.variant.label, "seed": run.seed,
                                   "dir": str(run.out), "error": outcome["error"]})  # fmt: skip
                else:
                    done = outcome["epochs_done"]
                    say(f"{worker.head}: done ({done} epoch{'s' if done != 1 else ''}, "
                        f"{outcome['wall_s']:.1f} s)")  # fmt: skip
    except BaseException:  # an interrupt: stop the workers too
        _stop([worker.process for worker in running.values()])
        raise
    return failed


@dataclass
class _Worker:
    """A run training in its own process, and the pipe its outcome comes back through."""

    head: str
    run: PlannedRun
    process: Any
    receiver: Any


def _start_worker(
    ctx: Any,
    head: str,
    run: PlannedRun,
    what: str,
    *,
    threads: int,
    force: bool,
    say: Callable[[str], None],
) -> _Worker:
    """Start ``run`` in a new process (``threads`` CPU threads where its config sets none)."""
    config = run.config
    if config.threads is None:
        config = config.replace(threads=threads)
    threads_s = f"{config.threads} thread" + ("s" if config.threads != 1 else "")
    say(f"{head}: {what} ({threads_s}) -> {run.out}")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_train_worker, args=(sender, config, force), name=f"xsam {head}")
    process.start()
    sender.close()  # the child's end: EOF here once the child is gone
    return _Worker(head, run, process, receiver)


def _outcome(worker: _Worker) -> _Outcome:
    """What an ended worker sent; an error naming its exit code when it sent nothing."""
    worker.process.join()
    outcome = worker.receiver.recv() if worker.receiver.poll() else None
    worker.receiver.close()
    if outcome is None:
        return {"error": f"the worker process ended with exit code {worker.process.exitcode}"}
    return outcome


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
        outcome: _Outcome = {
            "complete": result["complete"],
            "epochs_done": result["epochs_done"],
            "wall_s": result["wall_s"],
            "resumed_from": result["resumed_from"],
        }
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
