"""Timing, statistics and bookkeeping helpers used by every section."""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def log(msg: str) -> None:
    """Progress goes to stderr; stdout carries the markdown report only."""
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds taken by ``fn()``, with the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Schedule:
    """How many interleaved rounds a timing section runs, and when it may stop early."""

    rounds: int  # timed rounds, at most
    warmup: int  # untimed rounds before them
    min_rounds: int = 5  # timed rounds to run before the budget may stop the section
    budget_s: float = math.inf  # seconds, warm-up included


def interleaved_rounds(schedule: Schedule, label: str | None = None) -> Iterator[int]:
    """Round indices ``0 … warmup + rounds − 1``; the first ``schedule.warmup`` are warm-up.

    Stops early, once ``min_rounds`` timed rounds are done, when ``budget_s`` seconds have
    gone by, so a busy machine cannot stretch the run without bound. With a ``label``, logs
    the progress after every round and says when the budget stopped the section."""
    t_start = time.perf_counter()
    for r in range(schedule.warmup + schedule.rounds):
        yield r
        done = r - schedule.warmup + 1
        elapsed = time.perf_counter() - t_start
        if label is not None:
            log(f"  {label}: round {max(0, done)}/{schedule.rounds} ({elapsed:.0f}s)")
        if done >= schedule.min_rounds and elapsed > schedule.budget_s:
            if label is not None:
                log(
                    f"  {label}: time budget of {schedule.budget_s:.0f}s spent, "
                    f"stopping after {done} rounds"
                )
            return


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def iqr(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def bootstrap_ci(xs: list[float], seed: int, n: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median."""
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def ratios(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios ``num[i] / den[i]``."""
    return [a / b for a, b in zip(num, den)]


def storage_bytes(tensors: list[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(seen.values())


def state_tensors(state: Any) -> list[Tensor]:
    """Every tensor in an optimizer's ``state`` (a dict of per-parameter dicts)."""
    out: list[Tensor] = []
    for entry in state.values():
        for v in entry.values():
            if isinstance(v, Tensor):
                out.append(v)
    return out
