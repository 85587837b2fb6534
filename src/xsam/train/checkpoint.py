"""Run folders: atomic writes, checkpoints, RNG state and the per-epoch metrics files.

A run folder holds ``config.json`` (the resolved config), ``run.json`` (how and where it ran),
``metrics.jsonl`` and ``metrics.csv`` (one row per finished epoch), ``last.pt`` (everything
needed to continue after the last finished epoch) and, with ``keep_checkpoints``,
``checkpoints/epochNNN.pt`` (the weights after every epoch, for ``xsam probe``). Every file is written to a temporary name
in the same folder and moved into place with ``os.replace``, so a crash leaves either the old
or the new file, never a torn one. The metrics files are rewritten from the checkpoint's copy
of the metrics, so they never disagree with it after a resume.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, TrainConfig

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "KEPT_DIR",
    "METRIC_KEYS",
    "METRICS_CSV",
    "METRICS_JSONL",
    "RUN_FILES",
    "RUN_INFO",
    "TIME_KEYS",
    "atomic_save",
    "atomic_write_text",
    "clear_run_files",
    "get_rng_state",
    "load_checkpoint",
    "prepare_run_dir",
    "read_metrics",
    "run_status",
    "set_rng_state",
    "write_metrics",
]

CONFIG, RUN_INFO, CHECKPOINT = "config.json", "run.json", "last.pt"
METRICS_JSONL, METRICS_CSV = "metrics.jsonl", "metrics.csv"
RUN_FILES = (CONFIG, RUN_INFO, CHECKPOINT, METRICS_JSONL, METRICS_CSV)
KEPT_DIR = "checkpoints"
"""The folder of the weights kept after every epoch (``keep_checkpoints``):
``epochNNN.pt``."""

METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "val_loss",
    "val_acc",
    "train_acc_noisy",
    "train_acc_clean",
    "memorized",
    "alpha",
    "psi",
    "g0_norm",
    "gk_norm",
    "lr",
    "epoch_time_s",
    "images_per_s",
    "skipped_updates",
    "full_updates",
    "alpha_searches",
    "eval_time_s",
    "wall_s",
)
"""Columns of ``metrics.csv``. Accuracies are fractions in [0, 1]; ``psi``, ``g0_norm`` and
``gk_norm`` are means over the epoch's updates; ``alpha`` is the α in use at the epoch's end;
``val_loss`` / ``val_acc`` are empty without a validation set (``val_size``);
``train_acc_noisy`` / ``train_acc_clean`` (the trained model on the unaugmented training images,
against the noisy and the true labels) and ``memorized`` (the fraction of flipped examples
predicted as their wrong label) are empty without label noise;
``lr`` the learning rate of the epoch's first update; ``epoch_time_s`` the training time of the
epoch (``eval_time_s`` the evaluation's); ``wall_s`` the run's total of both so far;
``skipped_updates`` the run's total so far; ``full_updates`` the SAM family's applied
sharpness-aware updates so far (fewer than all updates under a perturbation schedule; empty for
``sgd``)."""
TIME_KEYS = frozenset({"epoch_time_s", "images_per_s", "eval_time_s", "wall_s"})
"""Metrics that measure time: they differ between otherwise identical runs."""


# ---------------------------------------------------------------------- atomic writes
def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    try:  # make the rename itself durable (POSIX); not possible everywhere
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the trainer (tensors on the CPU, no pickled code)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"no checkpoint at {path}") from None
    except Exception as exc:  # torch raises several types for a damaged file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read checkpoint {path}: {msg}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise ConfigError(f"{path} is not an xsam training checkpoint")
    return ckpt


# ---------------------------------------------------------------------- RNG state
def get_rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, python) in checkpoint-safe types."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------- metrics files
def _csv_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_metrics(run_dir: str | Path, metrics: Iterable[dict[str, Any]]) -> None:
    """(Re)write ``metrics.jsonl`` and ``metrics.csv`` from the list of epoch rows."""
    run_dir = Path(run_dir)
    rows = list(metrics)
    atomic_write_text(
        run_dir / METRICS_JSONL, "".join(json.dumps(_json_safe(r)) + "\n" for r in rows)
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_KEYS)
    for r in rows:
        writer.writerow([_csv_value(r.get(k)) for k in METRIC_KEYS])
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (empty if the file does not exist)."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    rows = []
    try:
        for i, line in enumerate(path.read_text().splitlines(), 1):  # noqa: B007
            if line.strip():
                rows.append(json.loads(line))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path} (line {i}): {exc}") from exc
    return rows


def run_status(run_dir: str | Path) -> tuple[str, TrainConfig | None, int]:
    """``(status, config, epochs_done)`` of a run folder; status is ``"absent"`` (no folder or
    an empty one), ``"foreign"`` (a folder with files but no ``config.json``), ``"started"``
    (config but no finished epoch), ``"partial"`` or ``"complete"`` (by the metrics file; the
    checkpoint is written first, so it is never behind them)."""
    run_dir = Path(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "absent", None, 0
    if not (run_dir / CONFIG).is_file():
        return "foreign", None, 0
    config = TrainConfig.from_json(run_dir / CONFIG)
    done = len(read_metrics(run_dir))
    if done == 0 and not (run_dir / CHECKPOINT).is_file():
        return "started", config, 0
    return ("complete" if done >= config.epochs else "partial"), config, done


# ---------------------------------------------------------------------- run folder
_RUN_NAMES = "|".join(map(re.escape, RUN_FILES))
_OWN_TMP = re.compile(rf"\.(?:{_RUN_NAMES})\.\d+\.tmp|\.write-test\.\d+")
_KEPT = re.compile(r"epoch\d+\.pt|\.epoch\d+\.pt\.\d+\.tmp")


def clear_run_files(run_dir: str | Path) -> None:
    """Delete every file a run writes in ``run_dir`` and nothing else: :data:`RUN_FILES`, the
    kept weights ``checkpoints/epochNNN.pt`` (the folder too, when nothing else is left in
    it) and the temporary files of writes that were interrupted."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for p in run_dir.iterdir():
        if _OWN_TMP.fullmatch(p.name) and p.is_file():
            p.unlink()
    kept = run_dir / KEPT_DIR
    if kept.is_dir() and not kept.is_symlink():
        for p in kept.iterdir():
            if _KEPT.fullmatch(p.name) and p.is_file():
                p.unlink()
        if not any(kept.iterdir()):
            kept.rmdir()


def prepare_run_dir(run_dir: str | Path, *, resume: bool, force: bool) -> str:
    """Make ``run_dir`` ready for a run and say how to start: ``"new"`` or ``"resume"``.

    An existing run is never overwritten unless ``force``; with ``resume`` an existing run is
    continued (a run folder without a finished epoch starts over). Whenever a run folder's run
    starts over, its files are deleted first (:func:`clear_run_files`: the kept checkpoints
    included, nothing the run did not write), so no file of the earlier run is read as the new
    one's. Raises :class:`ConfigError` if the folder holds a run and neither flag is given, if
    it holds other files (without ``force``), or if it cannot be created or written."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output folder {run_dir} exists and is not a folder")
    status, _, _ = run_status(run_dir)
    if status == "foreign" and not force:
        raise ConfigError(
            f"output folder {run_dir} is not empty and holds no run; choose another --out"
        )
    held_run = status in ("started", "partial", "complete")
    if held_run and not (force or resume):
        raise ConfigError(
            f"run folder {run_dir} already holds a run; pass --resume to continue it or "
            "--force to overwrite it"
        )
    mode = "resume" if status in ("partial", "complete") and not force else "new"
    try:
        if held_run and mode == "new":
            clear_run_files(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write to output folder {run_dir}: {exc.strerror or exc}"
        ) from None
    return mode
