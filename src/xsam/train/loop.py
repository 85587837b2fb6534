"""The training loop: ``train(config) -> result``.

Read it in this order:

1. :func:`train` (this module) — the entry point: joins ``torchrun``'s process group if there
   is one, opens the run folder (new, resumed, or already complete) and calls :func:`_run`.
2. :func:`_run` — the whole run in a screenful: data, state, resume, then for every epoch
   ``run_epoch`` → append the row → write the run folder.
3. :func:`prepare_data` (this module) — which examples the run trains, validates and tests on
   (:func:`select_examples`) and their loaders (:func:`make_loaders`).
4. :mod:`xsam.train.state` — :class:`~xsam.train.state.RunState`, everything that changes while
   the run trains, with ``checkpoint()`` / ``restore()``; :func:`lr_factor`; the optimizer.
5. :mod:`xsam.train.updates` — one update per optimizer kind (plain, SAM closure, SAM under
   autocast), each ``update(x, y) -> UpdateResult``.
6. :mod:`xsam.train.epoch` — one epoch: the updates, :func:`evaluate`, the metrics row.

Everything random is seeded from ``config.seed`` (model init, data order, augmentation), so on
the CPU a run is a function of its config, and a resumed run continues bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from ..data import BatchLoader, ImageDataset, load_dataset, noisy_labels
from .checkpoint import (
    CHECKPOINT,
    CONFIG,
    KEPT_DIR,
    RUN_INFO,
    TIME_KEYS,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    run_status,
    write_metrics,
)
from .config import RESUME_FREE_KEYS, RESUME_HOW, ConfigError, TrainConfig, resume_diff
from .epoch import EpochTotals, batches_done, epoch_line, evaluate, run_epoch
from .process_group import Ranks, close_process_group, init_ranks
from .state import RunState, build_optimizer, build_run_state, lr_factor
from .updates import make_autocast, make_update

__all__ = [
    "RESUME_FREE_KEYS",
    "balanced_subset",
    "build_optimizer",
    "evaluate",
    "lr_factor",
    "resolve_device",
    "summarize",
    "train",
]

SUBSET_SEED = 0
"""Seed of the ``limit_train`` / ``limit_test`` subsets: fixed, so that runs with different
seeds (and different optimizers) see the same examples."""

VAL_SEED = 1
"""Seed of the validation split (``val_size``): fixed for the same reason."""


# ---------------------------------------------------------------------- 1. the entry point
def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    force: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train and evaluate as ``config`` says; return the metrics.

    Args:
        config: the run. With ``config.out`` set, the run folder is written there (see
            :mod:`xsam.train.checkpoint`); with ``None`` nothing is written.
        resume: continue the run in ``config.out`` from its last finished epoch (a complete run
            returns at once; a folder without a run starts one). ``config`` must match the
            saved one except in :data:`RESUME_FREE_KEYS`.
        force: overwrite a run already in ``config.out``.
        stop_after: stop once this many epochs are done (the run can be resumed later).
        log: called with one line per epoch (and a few notes); ``None``: silent.
        progress: show a tqdm progress bar over each epoch's batches.

    Returns:
        ``{"out", "config", "metrics" (one dict per epoch, see
        :data:`~xsam.train.checkpoint.METRIC_KEYS`), "complete", "epochs_done",
        "final_test_acc", "best_test_acc", "best_epoch", "final_val_acc", "wall_s", "resumed_from",
        "model"}`` (``model`` is the trained module, ``None`` when a complete run was only
        read back).

    Raises:
        ConfigError: an invalid config or an unusable run folder.
        xsam.data.DataError: the data set cannot be found or read.
    """
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    ranks = init_ranks(str(config.device))
    finished = False
    try:
        result = _train(
            config,
            resume=resume,
            force=force,
            stop_after=stop_after,
            log=log if ranks.main else None,
            progress=progress and ranks.main,
            ranks=ranks,
        )
        finished = True
        return result
    finally:  # the thread count and cuDNN autotuning apply to this run only
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        if ranks.owned:
            close_process_group(synchronise=finished)


def _train(
    config: TrainConfig,
    *,
    resume: bool,
    force: bool,
    stop_after: int | None,
    log: Callable[[str], None] | None,
    progress: bool,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    ranks = ranks or Ranks()
    cfg = config.validated()
    say = log or (lambda s: None)
    run_dir = Path(cfg.out) if cfg.out is not None else None
    device = _process_device(cfg, ranks)
    # Rank 0 owns the run folder; the others follow its decision (or its error).
    outcome: Any = None
    if ranks.main:
        try:
            outcome = _open_run(cfg, run_dir, resume=resume, force=force, say=say)
        except ConfigError as exc:
            outcome = exc
    outcome = ranks.share(outcome)
    if isinstance(outcome, ConfigError):
        raise outcome
    mode, done = outcome
    if done is not None:
        return _result(cfg, done, complete=True, resumed_from=len(done), model=None)
    return _run(cfg, run_dir, mode, device, ranks, say, progress and log is not None, stop_after)


def _process_device(cfg: TrainConfig, ranks: Ranks) -> torch.device:
    """The device this process trains on (under ``torchrun``: its ``LOCAL_RANK``'s GPU)."""
    device = resolve_device(cfg.device)
    if ranks.world > 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if cfg.batch_size % ranks.world:
            raise ConfigError(
                f"batch_size ({cfg.batch_size}) must be divisible by the number of processes "
                f"({ranks.world}): it is the global batch, split evenly over the ranks"
            )
    return device


def _open_run(
    cfg: TrainConfig,
    run_dir: Path | None,
    *,
    resume: bool,
    force: bool,
    say: Callable[[str], None],
) -> tuple[str, list[dict[str, Any]] | None]:
    """``(mode, metrics of a run already complete or None)`` after preparing the folder."""
    mode = "new"
    if run_dir is not None:
        status, saved, _ = run_status(run_dir)
        if resume and saved is not None and status != "started":
            diff = resume_diff(saved.validated(), cfg)
            if diff:
                raise ConfigError(
                    f"cannot resume {run_dir}: the config differs from the saved one "
                    f"({'; '.join(diff)})" + RESUME_HOW
                )
        # a folder with this config and no checkpoint (a start that failed, e.g. on missing
        # data) holds nothing to lose: the same run starts again there without --resume
        again = status == "started" and not resume_diff(saved.validated(), cfg)  # type: ignore[union-attr]
        mode = prepare_run_dir(run_dir, resume=resume or again, force=force)
        if mode == "new":  # saved first: a run killed at any point later resumes as itself
            atomic_write_text(run_dir / CONFIG, cfg.to_json())
        if mode == "new" and status == "started" and not force:
            say(f"{run_dir}: no checkpoint to resume from; starting the run again")
        if mode == "resume" and status == "complete":
            metrics = read_metrics(run_dir)
            say(f"{run_dir}: already complete ({len(metrics)} epochs)")
            return mode, metrics
    return mode, None


# ---------------------------------------------------------------------- 2. the run
def _run(
    cfg: TrainConfig,
    run_dir: Path | None,
    mode: str,
    device: torch.device,
    ranks: Ranks,
    say: Callable[[str], None],
    progress: bool,
    stop_after: int | None,
) -> dict[str, Any]:
    writer = run_dir if ranks.main else None  # only rank 0 writes
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = prepare_data(cfg, device, ranks)
    state = build_run_state(
        cfg,
        data.train,
        num_classes=data.dataset.num_classes,
        image_shape=data.dataset.image_shape,
        data_fingerprint=data.fingerprint,
        device=device,
        ranks=ranks,
    )
    info = _run_info(device, data, state.model, ranks)
    if mode == "resume":
        assert run_dir is not None
        _resume(state, run_dir, writer, info, ranks)
        say(f"{run_dir}: resuming {_position(state)}")
    elif writer is not None:
        atomic_write_text(writer / RUN_INFO, _to_json(info))
    resumed_from = state.epoch if mode == "resume" else None

    autocast = make_autocast(cfg.amp, device)
    update = make_update(state, autocast)
    show = tqdm.write if progress else say
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(state.epoch, last_epoch):
        row = run_epoch(
            state,
            update,
            epoch,
            eval_loaders={"test": data.test, "val": data.val},
            memorisation=(data.train_eval, data.train_clean_y),
            autocast=autocast,
            ranks=ranks,
            progress=progress,
            on_update=_mid_epoch_saver(state, writer, ranks),
        )
        state.metrics.append(row)
        if writer is not None:
            write_epoch(state, writer)
        ranks.barrier()  # a resume on any rank reads a finished checkpoint
        show(epoch_line(row, cfg.epochs))
    complete = len(state.metrics) >= cfg.epochs
    return _result(
        cfg, state.metrics, complete=complete, resumed_from=resumed_from, model=state.model
    )


def _resume(
    state: RunState, run_dir: Path, writer: Path | None, info: dict[str, Any], ranks: Ranks
) -> None:
    """Put ``state`` where ``run_dir``'s checkpoint left it (under torchrun, a mid-epoch
    checkpoint holds every rank's own state: each takes its own); rank 0 brings the metrics
    files up to the checkpoint and notes the resume in ``run.json``."""
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    per_rank = ckpt.get("ranks")
    if per_rank is not None:
        if len(per_rank) != ranks.world:
            raise ConfigError(
                f"cannot resume {run_dir}: its mid-epoch checkpoint holds {len(per_rank)} "
                f"ranks' states, this run has {ranks.world} process(es)"
            )
        ckpt = per_rank[ranks.rank]
    state.restore(ckpt, run_dir)
    if writer is not None:
        write_metrics(writer, state.metrics)  # in case they lag behind the checkpoint
        old = _read_json(writer / RUN_INFO)
        old.setdefault("resumed", []).append({k: info[k] for k in ("argv", "started", "host")})
        info = {**old, "device": info["device"], "threads": info["threads"]}
        atomic_write_text(writer / RUN_INFO, _to_json(info))


def _position(state: RunState) -> str:
    """Where a resumed run stands: after an epoch, or at an update inside one."""
    done, n = batches_done(state, state.epoch), len(state.loader)
    if done == 0:
        return f"after epoch {state.epoch}/{state.config.epochs}"
    return (
        f"at update {state.global_step} (epoch {state.epoch + 1}/{state.config.epochs}, "
        f"batch {done}/{n})"
    )


def _mid_epoch_saver(
    state: RunState, writer: Path | None, ranks: Ranks
) -> Callable[[EpochTotals], None] | None:
    """With ``checkpoint_every``: a callback that writes ``last.pt`` after every that many
    updates (with the epoch's totals so far), so a run killed mid-epoch resumes from there.
    Under torchrun every rank calls it: mid-epoch the ranks' loader positions (augmentation
    generators), BatchNorm statistics and epoch totals differ, so rank 0 saves all of them
    (``"ranks"``: one checkpoint per rank)."""
    every = state.config.checkpoint_every
    if every is None:
        return None

    def save(totals: EpochTotals) -> None:
        if state.global_step % every:
            return
        ckpt = state.checkpoint(partial=totals.state_dict())
        if ranks.world > 1:
            ckpt = {**ckpt, "ranks": ranks.gather(ckpt)}
        if writer is not None:
            atomic_save(ckpt, writer / CHECKPOINT)

    return save


def write_epoch(state: RunState, run_dir: Path) -> None:
    """After an epoch: ``last.pt``, the kept weights (``keep_checkpoints``) and the metrics
    files, in that order (so the metrics never run ahead of the checkpoint)."""
    ckpt = state.checkpoint()
    atomic_save(ckpt, run_dir / CHECKPOINT)
    if state.config.keep_checkpoints:  # weights only, for the analysis tools (xsam probe)
        keep = {"format": ckpt["format"], "epoch": ckpt["epoch"], "model": ckpt["model"]}
        (run_dir / KEPT_DIR).mkdir(exist_ok=True)
        atomic_save(keep, run_dir / KEPT_DIR / f"epoch{ckpt['epoch']:03d}.pt")
    write_metrics(run_dir, state.metrics)


# ---------------------------------------------------------------------- 3. the data
@dataclass
class Examples:
    """The examples a run uses, as uint8 images and labels: train, test and (with
    ``val_size``) validation. With label noise, ``train_y`` and ``val_y`` are the noisy
    labels the run sees and ``train_clean_y`` the true training labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    train_clean_y: torch.Tensor | None = None


@dataclass
class RunData:
    """The run's loaders: ``train`` (this rank's shard, shuffled and augmented from the seed),
    ``test`` and ``val`` (``None`` without ``val_size``), with the data set they come from, its
    fingerprint and the number of training examples (over all ranks)."""

    dataset: ImageDataset
    fingerprint: str
    train: BatchLoader
    test: BatchLoader
    val: BatchLoader | None
    train_examples: int
    train_eval: BatchLoader | None = None  # the training images in order, noisy labels
    train_clean_y: torch.Tensor | None = None
    noise: dict[str, Any] | None = None  # what label_noise did (for run.json)


def prepare_data(cfg: TrainConfig, device: torch.device, ranks: Ranks | None = None) -> RunData:
    """Load ``cfg.dataset`` and build the run's loaders (see :func:`select_examples`)."""
    data = load_dataset(cfg.dataset, cfg.data_dir)
    return make_loaders(cfg, data, select_examples(cfg, data), device, ranks or Ranks())


def select_examples(cfg: TrainConfig, data: ImageDataset) -> Examples:
    """The run's examples, in this order: the validation split (``val_size`` examples of the
    training set, a fixed class-balanced subset from :data:`VAL_SEED`) is held out; then the
    training set is cut to ``limit_train`` and the test set to ``limit_test`` (fixed
    class-balanced subsets from :data:`SUBSET_SEED`). So with ``val_size=V`` and
    ``limit_train=L`` the run trains on ``min(L, N - V)`` examples."""
    ex = Examples(data.train_x, data.train_y, data.test_x, data.test_y)
    if cfg.val_size is not None:
        if cfg.val_size >= len(ex.train_y):
            raise ConfigError(
                f"val_size should be < the {len(ex.train_y)} training examples of {cfg.dataset} "
                f"but is: {cfg.val_size}"
            )
        val_idx = balanced_subset(ex.train_y, cfg.val_size, seed=VAL_SEED)
        keep = torch.ones(len(ex.train_y), dtype=torch.bool)
        keep[val_idx] = False
        ex.val_x, ex.val_y = ex.train_x[val_idx], ex.train_y[val_idx]
        ex.train_x, ex.train_y = ex.train_x[keep], ex.train_y[keep]
    if cfg.limit_train is not None:
        idx = balanced_subset(ex.train_y, cfg.limit_train)
        ex.train_x, ex.train_y = ex.train_x[idx], ex.train_y[idx]
    if cfg.limit_test is not None:
        idx = balanced_subset(ex.test_y, cfg.limit_test)
        ex.test_x, ex.test_y = ex.test_x[idx], ex.test_y[idx]
    if cfg.label_noise > 0:
        add_label_noise(cfg, ex, data.num_classes)
    return ex


def add_label_noise(cfg: TrainConfig, ex: Examples, num_classes: int) -> None:
    """Flip ``cfg.label_noise`` of the training labels and of the validation labels (each set
    exactly, from ``noise_seed`` and ``noise_seed + 1``), never the test labels; keep the true
    training labels in ``ex.train_clean_y``."""
    kw = {"kind": cfg.noise_type, "num_classes": num_classes}
    ex.train_clean_y = ex.train_y
    ex.train_y = noisy_labels(ex.train_y, cfg.label_noise, seed=cfg.noise_seed, **kw)
    if ex.val_y is not None:
        ex.val_y = noisy_labels(ex.val_y, cfg.label_noise, seed=cfg.noise_seed + 1, **kw)


def data_fingerprint(cfg: TrainConfig, data: ImageDataset) -> str:
    """The data set's fingerprint, extended by the label noise when there is any (so a
    resumed run refuses other noisy labels even if its config was edited)."""
    base = data.fingerprint()
    if cfg.label_noise == 0:
        return base
    spec = f"{base}|noise={cfg.label_noise!r}|{cfg.noise_type}|{cfg.noise_seed}"
    return hashlib.sha256(spec.encode()).hexdigest()


def make_loaders(
    cfg: TrainConfig, data: ImageDataset, ex: Examples, device: torch.device, ranks: Ranks
) -> RunData:
    """The loaders of ``ex``: training sharded over the ranks (``batch_size`` is the global
    batch), shuffled and augmented from ``cfg.seed``; evaluation in order, unaugmented."""
    norm = {"mean": data.mean, "std": data.std, "device": device}

    def evaluation(x: torch.Tensor, y: torch.Tensor) -> BatchLoader:
        return BatchLoader(x, y, cfg.eval_batch_size, shuffle=False, **norm)

    val = evaluation(ex.val_x, ex.val_y) if ex.val_x is not None and ex.val_y is not None else None
    noisy = ex.train_clean_y is not None
    train = BatchLoader(
        ex.train_x,
        ex.train_y,
        cfg.batch_size // ranks.world,
        rank=ranks.rank,
        world_size=ranks.world,
        shuffle=True,
        augment=cfg.augmentation,
        seed=cfg.seed,
        **norm,
    )
    return RunData(
        dataset=data,
        fingerprint=data_fingerprint(cfg, data),
        train=train,
        test=evaluation(ex.test_x, ex.test_y),
        val=val,
        train_examples=len(ex.train_y),
        train_eval=evaluation(ex.train_x, ex.train_y) if noisy else None,
        train_clean_y=ex.train_clean_y.to(device) if noisy else None,
        noise=noise_summary(cfg, ex),
    )


def noise_summary(cfg: TrainConfig, ex: Examples) -> dict[str, Any] | None:
    if ex.train_clean_y is None:
        return None
    return {
        "rate": cfg.label_noise,
        "type": cfg.noise_type,
        "seed": cfg.noise_seed,
        "flipped_train": float((ex.train_y != ex.train_clean_y).double().mean()),
        "train_examples": len(ex.train_y),
        "noisy_val_examples": 0 if ex.val_y is None else len(ex.val_y),
    }


def balanced_subset(y: torch.Tensor, n: int, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Sorted indices of ``n`` examples, as balanced over the classes as possible.

    The examples of every class are put in a random order (from ``seed``); then the first of
    every class, the second of every class, and so on are taken until there are ``n``. So a
    smaller ``n`` gives a subset of a larger one's."""
    y = y.cpu()
    if n >= len(y):
        return torch.arange(len(y))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    ys = y[perm]
    num_classes = int(ys.max()) + 1
    by_class = torch.argsort(ys, stable=True)
    counts = torch.bincount(ys, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(ys)
    rank[by_class] = torch.arange(len(ys)) - starts[ys[by_class]]
    key = rank * num_classes + ys
    return perm[torch.argsort(key)[:n]].sort().values


# ---------------------------------------------------------------------- small helpers
def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best test accuracy, the best epoch, the final validation accuracy (``None``
    without a validation set) and the wall time of a run's metrics."""
    if not metrics:
        return {
            "final_test_acc": None,
            "best_test_acc": None,
            "best_epoch": None,
            "final_val_acc": None,
            "wall_s": 0.0,
        }
    best = max(metrics, key=lambda r: r["test_acc"])
    return {
        "final_test_acc": metrics[-1]["test_acc"],
        "best_test_acc": best["test_acc"],
        "final_val_acc": metrics[-1].get("val_acc"),
        "best_epoch": best["epoch"],
        "wall_s": metrics[-1]["wall_s"],
    }


def without_times(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metrics without the entries that measure time (for comparing runs)."""
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in metrics]


def _run_info(device: torch.device, data: RunData, model: nn.Module, ranks: Ranks) -> dict:
    return {
        "argv": sys.argv,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "xsam": __version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "data_source": data.dataset.source,
        "data_fingerprint": data.fingerprint,
        "train_examples": data.train_examples,
        "parameters": sum(p.numel() for p in model.parameters()),
        "processes": ranks.world,
        "label_noise": data.noise,
    }


def _result(
    cfg: TrainConfig,
    metrics: list[dict[str, Any]],
    *,
    complete: bool,
    resumed_from: int | None,
    model: nn.Module | None,
) -> dict[str, Any]:
    return {
        "out": cfg.out,
        "config": cfg.to_dict(),
        "metrics": metrics,
        "complete": complete,
        "epochs_done": len(metrics),
        **summarize(metrics),
        "resumed_from": resumed_from,
        "model": model,
    }


def _to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}
