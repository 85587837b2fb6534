"""One epoch: train over the loader once, evaluate, and return the epoch's row of metrics.

:func:`run_epoch` = :func:`train_epoch` (the updates, summed into :class:`EpochTotals`) +
:func:`evaluate` on each evaluation loader + :func:`epoch_row`. The row's keys are
:data:`~xsam.train.checkpoint.METRIC_KEYS`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import BatchLoader
from .process_group import Ranks
from .state import RunState
from .updates import STAT_KEYS, Update, UpdateResult

__all__ = [
    "MEMO_KEYS",
    "EpochTotals",
    "epoch_line",
    "epoch_row",
    "evaluate",
    "memorisation_metrics",
    "predictions",
    "batches_done",
    "run_epoch",
    "train_epoch",
]


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


@dataclass
class EpochTotals:
    """An epoch's training numbers, summed over its updates: the clean-pass loss (weighted by
    the batch size) and correct predictions, the examples seen, the α searches, and every
    update's statistics (averaged over the finite ones at the end)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    searches: int = 0
    stats: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STAT_KEYS})
    time_s: float = 0.0  # training time of the epoch so far

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        return cls(
            torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
        )

    def state_dict(self) -> dict[str, Any]:
        """The totals so far, for a mid-epoch checkpoint (exact: the sums as tensors)."""
        return {
            "loss_sum": self.loss_sum.detach().cpu().clone(),
            "correct": self.correct.detach().cpu().clone(),
            "seen": self.seen,
            "searches": self.searches,
            "stats": {k: list(v) for k, v in self.stats.items()},
            "time_s": self.time_s,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device: torch.device) -> EpochTotals:
        """The totals :meth:`state_dict` saved, on ``device``."""
        return cls(
            state["loss_sum"].to(device),
            state["correct"].to(device),
            int(state["seen"]),
            int(state["searches"]),
            {k: list(state["stats"].get(k, [])) for k in STAT_KEYS},
            float(state["time_s"]),
        )

    def add(self, result: UpdateResult, y: torch.Tensor) -> None:
        n = len(y)
        self.loss_sum += result.loss.double() * n
        self.correct += (result.logits.argmax(1) == y).sum()
        self.seen += n
        self.searches += result.alpha_searched
        for key, value in result.stats.items():
            self.stats[key].append(value)

    def reduce(self, ranks: Ranks) -> None:
        """Sum over every rank's share (in place)."""
        seen = torch.tensor(self.seen, dtype=torch.int64, device=self.loss_sum.device)
        ranks.sum_(self.loss_sum, self.correct, seen)
        self.seen = int(seen)

    def mean(self, key: str) -> float | None:
        finite = [v for v in self.stats[key] if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else None


def batches_done(state: RunState, epoch: int) -> int:
    """How many batches of epoch ``epoch`` the run has done (> 0 only after a resume from a
    mid-epoch checkpoint)."""
    where = state.loader.state_dict()
    return where["batch"] if where["epoch"] == epoch else 0


def _start_epoch(state: RunState, epoch: int) -> EpochTotals:
    """Position the loader at epoch ``epoch``'s next batch and return the epoch's totals so
    far: zeros at the epoch's start (where XSAM with ``alpha_every=None`` is asked for an α
    search), the saved ones after a mid-epoch resume."""
    device = state.loader.device
    if batches_done(state, epoch) > 0 and state.partial is not None:
        totals = EpochTotals.from_state(state.partial, device)
        state.partial = None
        return totals
    state.partial = None
    state.loader.set_epoch(epoch)
    if state.xsam and state.config.alpha_every is None:
        state.opt.request_alpha_search()  # type: ignore[attr-defined]
    return EpochTotals.zeros(device)


def train_epoch(
    state: RunState,
    update: Update,
    epoch: int,
    *,
    progress: bool = False,
    on_update: Callable[[EpochTotals], None] | None = None,
) -> EpochTotals:
    """Run every update of epoch ``epoch`` (0-based) from where ``state.loader`` stands,
    setting each update's learning rate first; XSAM with ``alpha_every=None`` is asked for an
    α search at the epoch's first update. ``on_update(totals)`` is called after every update
    but the epoch's last (for mid-epoch checkpoints)."""
    state.model.train()
    totals = _start_epoch(state, epoch)
    done, n = batches_done(state, epoch), len(state.loader)
    t0, before = time.perf_counter(), totals.time_s
    bar = tqdm(
        total=n,
        initial=done,
        desc=f"epoch {epoch + 1}/{state.config.epochs}",
        unit="batch",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )
    for x, y in state.loader:
        state.schedule.apply(state.opt, state.global_step)
        result = update(x, y)
        if not state.sam_family:  # the SAM family counts its own skips
            state.skipped_plain += result.skipped
        totals.add(result, y)
        state.global_step += 1
        done += 1
        totals.time_s = before + (time.perf_counter() - t0)
        bar.update(1)
        if progress and state.global_step % 10 == 0:
            bar.set_postfix(loss=f"{float(result.loss):.4f}")
        if on_update is not None and done < n:
            on_update(totals)
    bar.close()
    return totals


def run_epoch(
    state: RunState,
    update: Update,
    epoch: int,
    *,
    eval_loaders: Mapping[str, BatchLoader | None],
    autocast: Callable[[], Any] = contextlib.nullcontext,
    ranks: Ranks | None = None,
    progress: bool = False,
    memorisation: tuple[BatchLoader | None, torch.Tensor | None] = (None, None),
    on_update: Callable[[EpochTotals], None] | None = None,
) -> dict[str, Any]:
    """Train epoch ``epoch`` and evaluate; return its row of metrics (not yet appended to
    ``state.metrics``). ``eval_loaders`` maps a prefix (``"test"``, ``"val"``) to a loader,
    or to ``None`` for a set the run does not have (its columns are then ``None``).
    ``memorisation``: with label noise, the training images in order with their noisy labels
    and the true labels, for :func:`memorisation_metrics`. ``on_update``: see
    :func:`train_epoch`."""
    ranks = ranks or Ranks()
    lr = state.schedule.lr(state.global_step - batches_done(state, epoch))
    totals = train_epoch(state, update, epoch, progress=progress, on_update=on_update)
    train_time = totals.time_s
    totals.reduce(ranks)  # train metrics over every rank's share
    ranks.align_buffers(state.model)
    t1 = time.perf_counter()
    evals = {
        name: evaluate(state.model, loader, autocast) if loader is not None else (None, None)
        for name, loader in eval_loaders.items()
    }
    memo = memorisation_metrics(state.model, *memorisation, autocast=autocast)
    eval_time = time.perf_counter() - t1
    row = epoch_row(state, epoch, totals, evals, lr=lr, times=(train_time, eval_time))
    row.update(memo)
    return row


@torch.no_grad()
def predictions(
    model: nn.Module, loader: BatchLoader, autocast: Callable[[], Any] = contextlib.nullcontext
) -> torch.Tensor:
    """The class ``model`` (in eval mode) predicts for every example of ``loader``, in order."""
    was_training = model.training
    model.eval()
    out = [model_out.argmax(1) for model_out in _outputs(model, loader, autocast)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _outputs(model: nn.Module, loader: BatchLoader, autocast: Callable[[], Any]):
    for x, _ in loader:
        with autocast():
            yield model(x)


def memorisation_metrics(
    model: nn.Module,
    loader: BatchLoader | None,
    clean_y: torch.Tensor | None,
    *,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float | None]:
    """Memorisation made visible, on the (unaugmented) training set in eval mode:
    ``train_acc_noisy`` (accuracy on the labels the run trains on), ``train_acc_clean`` (on
    the true labels) and ``memorized`` (the fraction of the flipped examples predicted as
    their wrong label). ``None`` each without label noise."""
    if loader is None or clean_y is None:
        return dict.fromkeys(MEMO_KEYS)
    pred = predictions(model, loader, autocast)
    noisy_y = loader.y
    flipped = noisy_y != clean_y
    n_flipped = int(flipped.sum())
    return {
        "train_acc_noisy": float((pred == noisy_y).double().mean()),
        "train_acc_clean": float((pred == clean_y).double().mean()),
        "memorized": float((pred[flipped] == noisy_y[flipped]).double().mean())
        if n_flipped
        else None,
    }


MEMO_KEYS = ("train_acc_noisy", "train_acc_clean", "memorized")


def epoch_row(
    state: RunState,
    epoch: int,
    totals: EpochTotals,
    evals: Mapping[str, tuple[float | None, float | None]],
    *,
    lr: float,
    times: tuple[float, float],
) -> dict[str, Any]:
    """The metrics row of epoch ``epoch`` (0-based) from its totals and evaluations."""
    train_time, eval_time = times
    wall = state.metrics[-1]["wall_s"] if state.metrics else 0.0
    xsam = state.xsam
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": float(totals.loss_sum) / totals.seen,
        "train_acc": int(totals.correct) / totals.seen,
    }
    for name, (loss, acc) in evals.items():
        row[f"{name}_loss"], row[f"{name}_acc"] = loss, acc
    row.update(
        {
            "alpha": state.opt.alpha if xsam else None,  # type: ignore[attr-defined]
            "psi": totals.mean("psi"),
            "g0_norm": totals.mean("g0_norm"),
            "gk_norm": totals.mean("gk_norm"),
            "lr": lr,
            "epoch_time_s": train_time,
            "images_per_s": totals.seen / train_time if train_time > 0 else None,
            "skipped_updates": state.skipped_updates,
            "full_updates": _full_updates(state.opt) if state.sam_family else None,
            "alpha_searches": totals.searches if xsam else None,
            "eval_time_s": eval_time,
            "wall_s": wall + (train_time + eval_time),
        }
    )
    return row


def _full_updates(opt: Any) -> int:
    return int(opt.updates - opt.cheap_updates)


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    """One line for the log: the epoch's losses and accuracies, α, ψ, lr and time."""
    line = (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} acc "
        f"{100 * r['train_acc']:5.2f}%  test loss {r['test_loss']:.4f} acc "
        f"{100 * r['test_acc']:5.2f}%"
    )
    if r.get("val_acc") is not None:
        line += f"  val acc {100 * r['val_acc']:5.2f}%"
    if r.get("memorized") is not None:
        line += (
            f"  train acc noisy/clean {100 * r['train_acc_noisy']:5.2f}/"
            f"{100 * r['train_acc_clean']:5.2f}%  memorized {100 * r['memorized']:5.2f}%"
        )
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
