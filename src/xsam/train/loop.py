"""The training loop: ``train(config) -> result``, read top to bottom.

One epoch: (XSAM, ``alpha_every=None``) ask for an α search at its first update; for every
batch set the learning rate from :func:`lr_factor`, run one update, accumulate the clean-pass
loss and accuracy and the optimizer's statistics; then evaluate on the test set, append a row of
metrics, write ``last.pt`` and the metrics files. Everything random is seeded from
``config.seed`` (model init, data order, augmentation), so on the CPU a run is a function of its
config, and a resumed run continues bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import SAM, XSAM, __version__
from ..data import BatchLoader, load_dataset
from ..models import build_model
from ..policies import NormStatsSnapshot
from .checkpoint import (
    CHECKPOINT,
    CONFIG,
    RUN_INFO,
    TIME_KEYS,
    atomic_save,
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    run_status,
    set_rng_state,
    write_metrics,
)
from .config import ConfigError, TrainConfig

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

RESUME_FREE_KEYS = frozenset({"out", "device", "threads", "data_dir", "preset", "keep_checkpoints"})
"""Config fields a resumed run may change: they do not change the results (on one device)."""


# ---------------------------------------------------------------------- processes
class _Ranks:
    """This process's place under ``torchrun`` (rank 0 of 1 otherwise)."""

    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False) -> None:
        self.rank, self.world, self.owned = rank, world, owned

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum_(self, *tensors: torch.Tensor) -> None:
        if self.world > 1:
            import torch.distributed as dist

            for t in tensors:
                dist.all_reduce(t)

    def align_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics, which each rank's clean pass updates from
        its own batch) on every rank, so that evaluation and checkpoints agree."""
        if self.world > 1:
            import torch.distributed as dist

            for b in model.buffers():
                dist.broadcast(b, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _init_ranks(device_name: str) -> _Ranks:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): NCCL when the run
    uses CUDA, gloo otherwise. A group that already exists is used as it is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Ranks()
    import torch.distributed as dist

    owned = False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and not str(device_name).startswith("cpu")
        dist.init_process_group("nccl" if cuda else "gloo")
        owned = True
    return _Ranks(dist.get_rank(), dist.get_world_size(), owned)


# ---------------------------------------------------------------------- pure helpers
def lr_factor(
    step: int, total_steps: int, schedule: str = "cosine", warmup_steps: int = 0
) -> float:
    """The learning-rate multiplier of update ``step`` (0-based) out of ``total_steps``.

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` updates; then
    ``constant``: 1, or ``cosine``: ``(1 + cos(π t / T)) / 2`` with ``t = step − warmup_steps``
    and ``T = total_steps − warmup_steps`` (1 at the first update after warm-up, towards 0 at
    the end)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule should be 'cosine' or 'constant' but is: {schedule!r}")
    span = max(1, total_steps - warmup_steps)
    t = min(max(step - warmup_steps, 0), span) / span
    return 0.5 * (1.0 + math.cos(math.pi * t))


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


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``config`` describes, over ``model``'s parameters (``model`` may be a
    ``DistributedDataParallel`` wrapper: the perturbation mode then applies)."""
    base_cls: type[torch.optim.Optimizer]
    base_kw: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.base == "sgd":
        base_cls = torch.optim.SGD
        base_kw.update(momentum=config.momentum, nesterov=config.nesterov)
    else:
        base_cls = torch.optim.AdamW
    params = model.parameters()
    try:
        if config.optimizer == "sgd":
            return base_cls(params, **base_kw)
        sam_kw: dict[str, Any] = dict(
            rho=config.rho, steps=config.steps, adaptive=config.adaptive, eta=config.eta
        )
        if isinstance(model, nn.parallel.DistributedDataParallel):
            sam_kw["perturbation"] = config.perturbation
        if config.optimizer == "sam":
            return SAM(params, base_cls, model=model, **sam_kw, **base_kw)
        return XSAM(
            params,
            base_cls,
            model=model,
            alpha=config.alpha,
            rho_max=config.rho_max if config.rho_max else None,
            alpha_grid=config.alpha_grid,
            alpha_every=config.alpha_every,
            **sam_kw,
            **base_kw,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid optimizer settings: {exc}") from None


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: BatchLoader, autocast: Callable[[], Any] = contextlib.nullcontext
) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` (in eval mode) over ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=loader.device)
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    n = 0
    for x, y in loader:
        with autocast():
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was_training)
    return float(loss_sum) / max(n, 1), int(correct) / max(n, 1)


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


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _config_diff(saved: TrainConfig, new: TrainConfig) -> list[str]:
    a, b = saved.to_dict(), new.to_dict()
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in RESUME_FREE_KEYS and a[k] != b[k]]


def _run_info(device: torch.device, data: Any, model: nn.Module, train_examples: int) -> dict:
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
        "data_source": data.source,
        "data_fingerprint": data.fingerprint(),
        "train_examples": train_examples,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------- the loop
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
    ranks = _init_ranks(str(config.device))
    try:
        return _train(
            config,
            resume=resume,
            force=force,
            stop_after=stop_after,
            log=log if ranks.main else None,
            progress=progress and ranks.main,
            ranks=ranks,
        )
    finally:  # the thread count and cuDNN autotuning apply to this run only
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        if ranks.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    *,
    resume: bool,
    force: bool,
    stop_after: int | None,
    log: Callable[[str], None] | None,
    progress: bool,
    ranks: _Ranks | None = None,
) -> dict[str, Any]:
    ranks = ranks or _Ranks()
    cfg = config.validated()
    say = log or (lambda s: None)
    run_dir = Path(cfg.out) if cfg.out is not None else None
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
    return _train_body(
        cfg, run_dir, mode, device, ranks, say, progress and log is not None, stop_after
    )


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
            diff = _config_diff(saved.validated(), cfg)
            if diff:
                raise ConfigError(
                    f"cannot resume {run_dir}: the config differs from the saved one "
                    f"({'; '.join(diff)}); use --force to start over"
                )
        mode = prepare_run_dir(run_dir, resume=resume, force=force)
        if resume and mode == "new" and status == "started":
            say(f"{run_dir}: no finished epoch to resume from; starting the run")
        if mode == "resume" and status == "complete":
            metrics = read_metrics(run_dir)
            say(f"{run_dir}: already complete ({len(metrics)} epochs)")
            return mode, metrics
    return mode, None


def _train_body(
    cfg: TrainConfig,
    run_dir: Path | None,
    mode: str,
    device: torch.device,
    ranks: _Ranks,
    say: Callable[[str], None],
    progress: bool,
    stop_after: int | None,
) -> dict[str, Any]:
    writer = run_dir if ranks.main else None  # only rank 0 writes

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---- data
    data = load_dataset(cfg.dataset, cfg.data_dir)
    train_x, train_y, test_x, test_y = data.train_x, data.train_y, data.test_x, data.test_y
    val_loader = None
    if cfg.val_size is not None:
        if cfg.val_size >= len(train_y):
            raise ConfigError(
                f"val_size should be < the {len(train_y)} training examples of {cfg.dataset} "
                f"but is: {cfg.val_size}"
            )
        val_idx = balanced_subset(train_y, cfg.val_size, seed=VAL_SEED)
        keep = torch.ones(len(train_y), dtype=torch.bool)
        keep[val_idx] = False
        val_loader = BatchLoader(
            train_x[val_idx],
            train_y[val_idx],
            cfg.eval_batch_size,
            shuffle=False,
            mean=data.mean,
            std=data.std,
            device=device,
        )
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.limit_train is not None:
        idx = balanced_subset(train_y, cfg.limit_train)
        train_x, train_y = train_x[idx], train_y[idx]
    if cfg.limit_test is not None:
        idx = balanced_subset(test_y, cfg.limit_test)
        test_x, test_y = test_x[idx], test_y[idx]
    loader = BatchLoader(
        train_x,
        train_y,
        cfg.batch_size // ranks.world,
        rank=ranks.rank,
        world_size=ranks.world,
        shuffle=True,
        augment=cfg.augmentation,
        mean=data.mean,
        std=data.std,
        seed=cfg.seed,
        device=device,
    )
    test_loader = BatchLoader(
        test_x,
        test_y,
        cfg.eval_batch_size,
        shuffle=False,
        mean=data.mean,
        std=data.std,
        device=device,
    )

    # ---- model, optimizer, schedule
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.image_shape[0])
    model.to(device)
    net: nn.Module = model  # what the training passes call; DDP under torchrun
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = build_optimizer(cfg, net)
    is_sam = isinstance(opt, (SAM, XSAM))
    is_xsam = isinstance(opt, XSAM)
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)

    def autocast() -> Any:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    snapshot = NormStatsSnapshot(model) if is_sam and amp_dtype is not None else None

    metrics: list[dict[str, Any]] = []
    start_epoch, global_step, skipped_plain = 0, 0, 0
    info = _run_info(device, data, model, len(train_y))
    info["processes"] = ranks.world
    if mode == "resume":
        assert run_dir is not None
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        if ckpt.get("data_fingerprint") != info["data_fingerprint"]:
            raise ConfigError(
                f"cannot resume {run_dir}: the data set differs from the one the run started "
                f"with (fingerprint {str(ckpt.get('data_fingerprint'))[:12]}… vs "
                f"{info['data_fingerprint'][:12]}…)"
            )
        try:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            loader.load_state_dict(ckpt["loader"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot resume from {run_dir / CHECKPOINT}: {exc}") from None
        set_rng_state(ckpt["rng"])
        metrics = list(ckpt["metrics"])
        start_epoch = int(ckpt["epoch"])
        global_step = int(ckpt["scheduler"]["step"])
        skipped_plain = int(ckpt.get("skipped_plain", 0))
        if writer is not None:
            write_metrics(run_dir, metrics)  # in case they lag behind the checkpoint
            old = _read_json(run_dir / RUN_INFO)
            old.setdefault("resumed", []).append({k: info[k] for k in ("argv", "started", "host")})
            info = {**old, "device": info["device"], "threads": info["threads"]}
            atomic_write_text(run_dir / RUN_INFO, _to_json(info))
        say(f"{run_dir}: resuming after epoch {start_epoch}/{cfg.epochs}")
    elif writer is not None:
        atomic_write_text(run_dir / CONFIG, cfg.to_json())
        atomic_write_text(run_dir / RUN_INFO, _to_json(info))
    resumed_from = start_epoch if mode == "resume" else None

    # ---- one update
    clean_out: list[torch.Tensor] = []

    def sam_closure_update(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def closure() -> torch.Tensor:
            out = net(x)
            loss = criterion(out, y)
            if torch.is_grad_enabled():
                loss.backward()
            if not clean_out:
                clean_out.append(out.detach())
            return loss

        return opt.step(closure).detach()

    def sam_amp_update(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            with autocast():
                out = net(x)
                return criterion(out, y), out

        def probe() -> torch.Tensor:
            with torch.no_grad():
                return forward()[0]

        assert snapshot is not None
        snapshot.save()
        opt.zero_grad(set_to_none=True)
        with opt.clean_pass():  # type: ignore[attr-defined]
            loss, out = forward()
            scaler.scale(loss).backward()
        clean_out.append(out.detach())
        for _ in range(opt.steps):  # type: ignore[attr-defined]
            opt.ascent_step()  # type: ignore[attr-defined]
            with opt.perturbed_pass():  # type: ignore[attr-defined]
                scaler.scale(forward()[0]).backward()
        ok = opt.descent_step(loss_fn=probe, scaler=scaler)  # type: ignore[attr-defined]
        scaler.update()
        if not ok:
            snapshot.restore()
        return loss.detach()

    def plain_update(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = net(x)
            loss = criterion(out, y)
        clean_out.append(out.detach())
        scaler.scale(loss).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
        norm_f, loss_f = float(norm), float(loss.detach())
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        ok = math.isfinite(norm_f) and math.isfinite(loss_f)
        if ok or scaler.is_enabled():  # a GradScaler skips a non-finite step itself
            scaler.step(opt)
            scaler.update()
        return loss.detach(), norm_f / scale, ok

    # ---- the epochs
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    show = tqdm.write if progress else say
    wall = metrics[-1]["wall_s"] if metrics else 0.0
    for epoch in range(start_epoch, last_epoch):
        model.train()
        loader.set_epoch(epoch)
        if is_xsam and cfg.alpha_every is None:
            opt.request_alpha_search()  # type: ignore[attr-defined]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen, searches = 0, 0
        stats: dict[str, list[float]] = {"psi": [], "g0_norm": [], "gk_norm": []}
        probes = getattr(opt, "last_probe_losses", None)
        epoch_lr = base_lrs[0] * lr_factor(global_step, total_steps, cfg.schedule, warmup_steps)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not progress,
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        for x, y in loader:
            factor = lr_factor(global_step, total_steps, cfg.schedule, warmup_steps)
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * factor
            clean_out.clear()
            if not is_sam:
                loss, g0, ok = plain_update(x, y)
                stats["g0_norm"].append(g0)
                skipped_plain += not ok
            else:
                scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                loss = sam_amp_update(x, y) if amp_dtype is not None else sam_closure_update(x, y)
                last = opt.last_stats  # type: ignore[attr-defined]
                for key in stats:
                    if key in last:
                        stats[key].append(last[key] / (1.0 if key == "psi" else scale))
                if is_xsam and opt.last_probe_losses is not probes:  # type: ignore[attr-defined]
                    probes = opt.last_probe_losses  # type: ignore[attr-defined]
                    searches += 1
            n = len(y)
            loss_sum += loss.double() * n
            correct += (clean_out[0].argmax(1) == y).sum()
            seen += n
            global_step += 1
            bar.update(1)
            if progress and global_step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        train_time = time.perf_counter() - t0
        bar.close()
        seen_t = torch.tensor(seen, dtype=torch.int64, device=device)
        ranks.sum_(loss_sum, correct, seen_t)  # train metrics over every rank's share
        seen = int(seen_t)
        ranks.align_buffers(model)
        t1 = time.perf_counter()
        test_loss, test_acc = evaluate(model, test_loader, autocast)
        val_loss, val_acc = (
            evaluate(model, val_loader, autocast) if val_loader is not None else (None, None)
        )
        eval_time = time.perf_counter() - t1
        wall += train_time + eval_time
        row = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum) / seen,
            "train_acc": int(correct) / seen,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "alpha": opt.alpha if is_xsam else None,  # type: ignore[attr-defined]
            "psi": _mean(stats["psi"]),
            "g0_norm": _mean(stats["g0_norm"]),
            "gk_norm": _mean(stats["gk_norm"]),
            "lr": epoch_lr,
            "epoch_time_s": train_time,
            "images_per_s": seen / train_time if train_time > 0 else None,
            "skipped_updates": opt.skipped_updates if is_sam else skipped_plain,  # type: ignore[attr-defined]
            "alpha_searches": searches if is_xsam else None,
            "eval_time_s": eval_time,
            "wall_s": wall,
        }
        metrics.append(row)
        if writer is not None:
            ckpt = {
                "format": 1,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": {
                    "schedule": cfg.schedule,
                    "step": global_step,
                    "total_steps": total_steps,
                    "warmup_steps": warmup_steps,
                    "base_lrs": base_lrs,
                },
                "scaler": scaler.state_dict(),
                "loader": loader.state_dict(),
                "rng": get_rng_state(),
                "skipped_plain": skipped_plain,
                "metrics": metrics,
                "config": cfg.to_dict(),
                "data_fingerprint": info["data_fingerprint"],
                "xsam_version": __version__,
            }
            atomic_save(ckpt, writer / CHECKPOINT)
            if cfg.keep_checkpoints:  # weights only, for the analysis tools (xsam probe)
                keep = {"format": 1, "epoch": epoch + 1, "model": ckpt["model"]}
                (writer / "checkpoints").mkdir(exist_ok=True)
                atomic_save(keep, writer / "checkpoints" / f"epoch{epoch + 1:03d}.pt")
            write_metrics(writer, metrics)
        ranks.barrier()  # a resume on any rank reads a finished checkpoint
        show(_epoch_line(row, cfg.epochs))
    return _result(
        cfg, metrics, complete=len(metrics) >= cfg.epochs, resumed_from=resumed_from, model=model
    )


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} acc "
        f"{100 * r['train_acc']:5.2f}%  test loss {r['test_loss']:.4f} acc "
        f"{100 * r['test_acc']:5.2f}%"
    )
    if r.get("val_acc") is not None:
        line += f"  val acc {100 * r['val_acc']:5.2f}%"
    if r["alpha"] is not None:
        line += f"  α {r['alpha']:.2f}"
    if r["psi"] is not None:
        line += f"  ψ {r['psi']:.3f}"
    ips = r["images_per_s"]
    return (
        line
        + f"  lr {r['lr']:.4g}  {r['epoch_time_s']:.1f} s"
        + (f" ({ips:.0f} img/s)" if ips else "")
    )


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


def without_times(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The metrics without the entries that measure time (for comparing runs)."""
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in metrics]


def _to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str) + "\n"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}
