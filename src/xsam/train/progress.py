"""Progress of runs that train in other processes: a line per epoch they finish.

The runs of ``xsam compare --jobs N`` and ``xsam demo`` train in worker processes that print
nothing; :func:`watch_epochs` reads their ``metrics.jsonl`` (written atomically after every
epoch) from the parent and reports each new epoch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import read_metrics
from .config import ConfigError

__all__ = ["epoch_summary", "watch_epochs"]


@contextlib.contextmanager
def watch_epochs(
    runs: Sequence[tuple[str, Path, int]], say: Callable[[str], None], interval: float = 0.5
) -> Iterator[Callable[[], None]]:
    """While the body runs, report every epoch the runs ``(label, folder, epochs)`` finish
    (read from their ``metrics.jsonl``: runs in worker processes print nothing themselves),
    one line each, every ``interval`` seconds. Yields the check itself, so that a caller can
    report the epochs so far before a line of its own; it runs once more when the body
    ends."""
    seen = {folder: len(_rows(folder)) for _, folder, _ in runs}
    lock, stop = threading.Lock(), threading.Event()

    def poll() -> None:
        with lock:
            for label, folder, epochs in runs:
                rows = _rows(folder)
                if len(rows) < seen[folder]:  # the run started over (--force)
                    seen[folder] = 0
                for row in rows[seen[folder] :]:
                    say(f"  {label}: {epoch_summary(row, epochs)}")
                seen[folder] = len(rows)

    def loop() -> None:
        while not stop.wait(interval):
            poll()

    thread = threading.Thread(target=loop, name="xsam demo progress", daemon=True)
    thread.start()
    try:
        yield poll
    finally:
        stop.set()
        thread.join()
        poll()


def _rows(folder: Path) -> list[dict[str, Any]]:
    try:
        return read_metrics(folder)
    except ConfigError:  # a file another tool is writing: read it next time
        return []


def epoch_summary(row: dict[str, Any], epochs: int) -> str:
    """One short line on an epoch of a demo run: test accuracy, memorised wrong labels, α,
    time."""
    text = f"epoch {row['epoch']:>2}/{epochs}  test acc {100 * row['test_acc']:5.2f}%"
    if row.get("memorized") is not None:
        text += f"  memorised {100 * row['memorized']:4.1f}% of the wrong labels"
    if row.get("alpha") is not None:
        text += f"  α {row['alpha']:.2f}"
    return text + f"  ({row['epoch_time_s'] + row['eval_time_s']:.1f} s)"
