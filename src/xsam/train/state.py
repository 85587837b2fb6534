"""The state of a run between two updates: how it is built, saved and restored.

:class:`RunState` holds everything that changes while a run trains (model, optimizer, GradScaler,
loader position, the metrics so far, the update counter) together with what it needs to save
that: :meth:`RunState.checkpoint` is the dict written to ``last.pt`` and
:meth:`RunState.restore` puts a freshly built state back where a checkpoint left it, so that the
run continues bit for bit. :func:`build_run_state` builds the state of epoch 0 from the config.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import SAM, XSAM, PerturbationSchedule, __version__
from ..data import BatchLoader
from ..models import build_model
from ..models.vit import decay_groups
from .checkpoint import CHECKPOINT, get_rng_state, set_rng_state
from .config import ConfigError, TrainConfig, resume_diff, unused_fields
from .process_group import Ranks

__all__ = [
    "LRSchedule",
    "RunState",
    "build_optimizer",
    "perturb_schedule",
    "build_run_state",
    "lr_factor",
    "model_options",
]

CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------- learning rate
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


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every update: ``base_lrs[i] · lr_factor(step, ...)`` for group i."""

    kind: str
    total_steps: int
    warmup_steps: int
    base_lrs: list[float]

    @classmethod
    def of(cls, config: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
        return cls(
            kind=config.schedule,
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=round(config.warmup_epochs * steps_per_epoch),
            base_lrs=[g["lr"] for g in opt.param_groups],
        )

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.kind, self.warmup_steps)

    def lr(self, step: int) -> float:
        """The first group's learning rate at ``step`` (the one the metrics report)."""
        return self.base_lrs[0] * self.factor(step)

    def apply(self, opt: torch.optim.Optimizer, step: int) -> None:
        factor = self.factor(step)
        for g, lr0 in zip(opt.param_groups, self.base_lrs):
            g["lr"] = lr0 * factor

    def state_dict(self, step: int) -> dict[str, Any]:
        return {
            "schedule": self.kind,
            "step": step,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "base_lrs": self.base_lrs,
        }


# ---------------------------------------------------------------------- optimizer
def perturb_schedule(config: TrainConfig, total_steps: int | None) -> PerturbationSchedule:
    """The perturbation schedule ``config`` describes; ``perturb_start`` is a fraction of the
    run's ``total_steps`` updates, the ``perturb_prob`` draws are seeded by ``config.seed``."""
    start = 0
    if config.perturb_start > 0:
        if total_steps is None:
            raise ConfigError("perturb_start needs the run's number of updates")
        start = round(config.perturb_start * total_steps)
    return PerturbationSchedule(
        every=config.perturb_every,
        start=start,
        prob=config.perturb_prob,
        seed=config.seed,
        reuse=config.perturb_reuse,
    )


def build_optimizer(
    config: TrainConfig, model: nn.Module, total_steps: int | None = None
) -> torch.optim.Optimizer:
    """The optimizer ``config`` describes, over ``model``'s parameters (``model`` may be a
    ``DistributedDataParallel`` wrapper: the perturbation mode then applies). ``total_steps``:
    the run's number of updates (needed by ``perturb_start``)."""
    base_cls: type[torch.optim.Optimizer]
    base_kw: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.base == "sgd":
        base_cls = torch.optim.SGD
        base_kw.update(momentum=config.momentum, nesterov=config.nesterov)
    else:
        base_cls = torch.optim.AdamW
    params: Any = model.parameters()
    if config.weight_decay_on == "matrices":
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        params = decay_groups(inner, config.weight_decay)
    try:
        if config.optimizer == "sgd":
            return base_cls(params, **base_kw)
        sam_kw: dict[str, Any] = dict(
            rho=config.rho,
            steps=config.steps,
            adaptive=config.adaptive,
            eta=config.eta,
            schedule=perturb_schedule(config, total_steps),
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


# ---------------------------------------------------------------------- the state
@dataclass
class RunState:
    """Everything a run carries from one update to the next.

    ``model`` is the module whose weights are saved; ``net`` is what the training passes call
    (``model`` itself, or its ``DistributedDataParallel`` wrapper under ``torchrun``). The
    epoch is the number of rows in ``metrics`` (finished epochs); ``global_step`` counts the
    updates so far (skipped ones included: the learning-rate schedule moves on);
    ``skipped_plain`` counts the skipped updates of the plain optimizer (the SAM family counts
    its own, in its state_dict)."""

    config: TrainConfig
    model: nn.Module
    net: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: BatchLoader
    schedule: LRSchedule
    data_fingerprint: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    skipped_plain: int = 0
    processes: int = 1  # torchrun's world size: data shards and local perturbation depend on it
    partial: dict[str, Any] | None = None  # a mid-epoch checkpoint's epoch totals so far

    @property
    def epoch(self) -> int:
        """Finished epochs (the 0-based index of the next one)."""
        return len(self.metrics)

    @property
    def sam_family(self) -> bool:
        return isinstance(self.opt, (SAM, XSAM))

    @property
    def xsam(self) -> bool:
        return isinstance(self.opt, XSAM)

    @property
    def skipped_updates(self) -> int:
        """The run's skipped updates so far."""
        if self.sam_family:
            return self.opt.skipped_updates  # type: ignore[attr-defined]
        return self.skipped_plain

    def checkpoint(self, partial: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``last.pt`` holds: this state, the global RNG states and the run's identity
        (config, data fingerprint, xsam version). ``partial``: written mid-epoch, the epoch's
        totals so far (:meth:`xsam.train.epoch.EpochTotals.state_dict`); the loader state
        then says where in the epoch the run stands."""
        return {
            "partial_epoch": partial,
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.schedule.state_dict(self.global_step),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": get_rng_state(),
            "skipped_plain": self.skipped_plain,
            "processes": self.processes,
            "metrics": list(self.metrics),
            "config": self.config.to_dict(),
            "data_fingerprint": self.data_fingerprint,
            "xsam_version": __version__,
        }

    def restore(self, ckpt: dict[str, Any], run_dir: str | Path = ".") -> None:
        """Continue from ``ckpt`` (a :meth:`checkpoint` of the same run); raises
        :class:`ConfigError` (naming ``run_dir``) if it cannot be used: another data set,
        another config (except in :data:`~xsam.train.config.RESUME_FREE_KEYS`), another
        learning-rate schedule, or contents that do not fit this run's state."""
        run_dir = Path(run_dir)
        if ckpt.get("data_fingerprint") != self.data_fingerprint:
            raise ConfigError(
                f"cannot resume {run_dir}: the data set differs from the one the run started "
                f"with (fingerprint {str(ckpt.get('data_fingerprint'))[:12]}… vs "
                f"{self.data_fingerprint[:12]}…)"
            )
        self._check_same_run(ckpt, run_dir)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.loader.load_state_dict(ckpt["loader"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot resume from {run_dir / CHECKPOINT}: {exc}") from None
        set_rng_state(ckpt["rng"])
        self.metrics = list(ckpt["metrics"])
        self.global_step = int(ckpt["scheduler"]["step"])
        self.skipped_plain = int(ckpt.get("skipped_plain", 0))
        self.partial = ckpt.get("partial_epoch")
        if self.loader.state_dict()["batch"] > 0 and self.partial is None:
            raise ConfigError(
                f"cannot resume from {run_dir / CHECKPOINT}: it stands mid-epoch but holds no "
                "totals of the epoch so far"
            )

    def _check_same_run(self, ckpt: dict[str, Any], run_dir: Path) -> None:
        """Refuse a checkpoint of another run (copied in, or a config.json edited since): its
        config, its schedule and its epoch count must be this run's."""
        where = run_dir / CHECKPOINT
        try:
            saved = TrainConfig.from_dict(ckpt["config"]).validated()
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"cannot resume from {where}: it records no usable config ({exc})"
            ) from None
        diff = resume_diff(saved, self.config)
        if diff:
            raise ConfigError(
                f"cannot resume {run_dir}: {where} was written by a run with another config "
                f"({'; '.join(diff)}); start over with --force (deletes this run) or use another "
                "--out"
            )
        sched = dict(ckpt.get("scheduler") or {})
        sched.pop("step", None)
        mine = self.schedule.state_dict(0)
        mine.pop("step")
        if sched != mine:
            raise ConfigError(
                f"cannot resume {run_dir}: {where} has another learning-rate schedule ({sched}; "
                f"this run: {mine}), e.g. a different number of updates per epoch"
            )
        saved_world = int(ckpt.get("processes", 1))
        if saved_world != self.processes:
            raise ConfigError(
                f"cannot resume {run_dir}: it ran on {saved_world} process(es), this run on "
                f"{self.processes}; the data shards (and a local perturbation) depend on it, so "
                f"resume with the same number (torchrun --nproc_per_node={saved_world})"
            )
        metrics = ckpt.get("metrics")
        if not isinstance(metrics, list) or len(metrics) != ckpt.get("epoch"):
            raise ConfigError(
                f"cannot resume from {where}: it is at epoch {ckpt.get('epoch')!r} but holds "
                f"{len(metrics) if isinstance(metrics, list) else 'no'} rows of metrics"
            )


def model_options(config: TrainConfig) -> dict[str, int]:
    """The model size options ``config`` sets for its model (``width``, ``depth``)."""
    unused = set(unused_fields(config))
    return {
        name: getattr(config, name)
        for name in ("width", "depth")
        if getattr(config, name) is not None and name not in unused
    }


def build_run_state(
    config: TrainConfig,
    loader: BatchLoader,
    *,
    num_classes: int,
    image_shape: tuple[int, ...],
    data_fingerprint: str,
    device: torch.device,
    ranks: Ranks,
) -> RunState:
    """The state before the first update: the global RNGs seeded from ``config.seed``, then
    the model initialised, moved to ``device`` (wrapped in DDP under ``torchrun``), its
    optimizer, the GradScaler (enabled for fp16 only) and the learning-rate schedule."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        num_classes=num_classes,
        in_channels=image_shape[0],
        image_size=image_shape[-1],
        **model_options(config),
    )
    model.to(device)
    net: nn.Module = model
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = build_optimizer(config, net, total_steps=config.epochs * len(loader))
    return RunState(
        config=config,
        model=model,
        net=net,
        opt=opt,
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        loader=loader,
        schedule=LRSchedule.of(config, opt, len(loader)),
        data_fingerprint=data_fingerprint,
        processes=ranks.world,
    )
