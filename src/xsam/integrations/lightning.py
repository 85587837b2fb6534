"""Lightning: train a ``LightningModule`` with any SAM-family optimizer.

Subclass :class:`SAMModule` instead of ``lightning.pytorch.LightningModule``, write
``sam_loss(batch, batch_idx)`` (forward and loss, nothing else) instead of ``training_step``, and
return an ``xsam.SAM`` / ``xsam.XSAM`` from ``configure_optimizers``. The Trainer's own settings
then apply, unchanged:

* ``precision="32-true"``, ``"bf16-mixed"``, ``"16-mixed"`` (the GradScaler of Lightning's
  precision plugin scales every pass and steps the base optimizer);
* ``accumulate_grad_batches=n``: every pass of the update (clean, each ascent point, each α
  probe) covers all ``n`` micro-batches, each loss divided by ``n`` as Lightning does;
* ``gradient_clip_val`` / ``gradient_clip_algorithm``: applied to ``d``, the final direction,
  through ``configure_gradient_clipping`` (after unscaling), as to any gradient;
* the loss logged (``sam_log_name``, default ``"train_loss"``) and returned by
  ``training_step`` is the clean loss, at the weights before the update.

How: automatic optimization. Lightning runs the clean pass itself (``training_step`` →
``sam_loss``, backward, micro-batch by micro-batch); :meth:`SAMModule.optimizer_step` then runs
the ascent passes over the micro-batches it kept, XSAM's α probes forward-only under
``torch.no_grad()``, and the descent, through the optimizer's lower-level API.

Several processes: ``strategy="ddp"`` or ``"ddp_spawn"`` (any ``DistributedDataParallel``
strategy, ``num_nodes`` included). At the start of ``fit`` the optimizer is attached to
Lightning's DDP wrapper (:meth:`xsam.SAMFamily.attach`) with ``sam_perturbation``:
``"local"`` (the default; each rank ascends from its own micro-batches, the clean and ascent
passes are not all-reduced, the update averages the ranks' directions ``d`` in one
all-reduce) or ``"global"`` (every pass all-reduced, as one process on the global batch). The
ascent passes run through the DDP wrapper, so DDP synchronises exactly the passes the mode
needs, and only on the last micro-batch of an accumulation window. Other strategies
(Lightning's FSDP, DeepSpeed, model parallel) are refused at the start of ``fit``. See
docs/multi-gpu.md.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from ..distributed import attach_wrapped, check_perturbation, clean_pass_sync
from .core import finish_update, require, sam_optimizer

pl = require("lightning.pytorch", "lightning")

__all__ = ["SAMModule"]


class SAMModule(pl.LightningModule):
    """A ``LightningModule`` whose optimizer step is one whole SAM-family update.

    Implement :meth:`sam_loss`; override ``training_step`` only to add logging, and call
    ``super().training_step(batch, batch_idx)`` for the loss (the clean one)."""

    sam_log_name: str | None = "train_loss"
    """Name under which the clean loss is logged each step (``None``: do not log)."""

    sam_perturbation: str | None = None
    """Under several processes: ``"local"`` or ``"global"`` (``None``: the optimizer's own
    choice, ``"local"`` unless it was built with another). Ignored in one process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sam_window: list[tuple[Any, int]] = []

    # ------------------------------------------------------------------ to implement
    def sam_loss(self, batch: Any, batch_idx: int) -> Tensor:
        """The loss on one (micro-)batch: forward and loss, no logging or other side effect.
        Called once per pass of the update (with gradients for the clean and ascent passes,
        under ``torch.no_grad()`` for XSAM's α probes)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement sam_loss(batch, batch_idx)"
        )

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        if not self.automatic_optimization:
            raise RuntimeError(
                f"{type(self).__name__}: SAMModule runs the update from optimizer_step and needs "
                "automatic optimization; do not set automatic_optimization = False"
            )
        check_perturbation(self.sam_perturbation, f"{type(self).__name__}.sam_perturbation")
        if self.trainer.world_size > 1:
            self._sam_attach()
        self._sam_window = []

    def _sam_attach(self) -> None:
        """Several processes: the optimizer learns Lightning's DDP wrapper (or refuses)."""
        wrapper = self.trainer.strategy.model
        if not isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            raise RuntimeError(
                f"SAMModule: the {type(self.trainer.strategy).__name__} strategy is not "
                "supported with several processes (its passes would not be synchronised the "
                "way the SAM update needs); use strategy='ddp' or 'ddp_spawn' "
                "(docs/multi-gpu.md)"
            )
        attach_wrapped(self._sam(), wrapper, self.sam_perturbation, "SAMModule")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The clean pass on one micro-batch: keeps the batch for the ascent passes, logs and
        returns the clean loss (Lightning runs the backward)."""
        ctx = contextlib.nullcontext()
        if not self._sam_window:  # first micro-batch of the step: record BN statistics
            ctx = self._sam().clean_pass()
        with ctx:
            loss = self.sam_loss(batch, batch_idx)
        self._sam_window.append((batch, batch_idx))
        if self.sam_log_name:
            self.log(self.sam_log_name, loss.detach(), on_step=True, on_epoch=True)
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """One SAM-family update. Lightning's closure runs the clean pass of the last
        micro-batch; then the ascent passes and the descent run over every micro-batch of the
        step (``accumulate_grad_batches`` of them)."""
        opt = sam_optimizer(optimizer, "SAMModule")
        if optimizer_closure is not None:
            with clean_pass_sync(opt):  # DDP, local perturbation: the clean gradient stays local
                optimizer_closure()
        window, self._sam_window = self._sam_window, []
        if not window:
            raise RuntimeError("SAMModule.optimizer_step: no micro-batch was seen in this step")
        trainer = self.trainer
        plugin = trainer.precision_plugin
        n = trainer.accumulate_grad_batches
        scaler = getattr(plugin, "scaler", None)

        def gradient_pass() -> None:
            for i, (batch, idx) in enumerate(window):
                with self._sam_sync(last=i == len(window) - 1):
                    with plugin.train_step_context():
                        loss = self._sam_forward(batch, idx) / n
                    (scaler.scale(loss) if scaler is not None else loss).backward()

        def probe_loss() -> Tensor:
            total: Tensor | float = 0.0
            for batch, idx in window:
                with plugin.train_step_context():
                    total = total + self.sam_loss(batch, idx) / n
            return torch.as_tensor(total)

        finish_update(opt, gradient_pass, probe_loss, scaler=scaler, clip=self._sam_clip)
        if scaler is not None and scaler.is_enabled():
            scaler.update()

    # ------------------------------------------------------------------ helpers
    def _sam_forward(self, batch: Any, idx: int) -> Tensor:
        """``sam_loss`` with gradients, through Lightning's DDP wrapper when there is one (its
        forward decides whether the backward is all-reduced)."""
        strategy = self.trainer.strategy
        if isinstance(strategy.model, torch.nn.parallel.DistributedDataParallel):
            return strategy._forward_redirection(strategy.model, self, "sam_loss", batch, idx)
        return self.sam_loss(batch, idx)

    def _sam_sync(self, *, last: bool) -> Any:
        """No all-reduce on a micro-batch that is not the last of its window (DDP only)."""
        wrapper = self.trainer.strategy.model
        if last or not isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return wrapper.no_sync()

    def _sam(self) -> Any:
        return sam_optimizer(self.optimizers(use_pl_optimizer=False), "SAMModule")

    def _sam_clip(self, base: torch.optim.Optimizer) -> None:
        """Lightning's hooks before a step and its clipping, on d (already unscaled)."""
        trainer = self.trainer
        for callback in trainer.callbacks:
            callback.on_before_optimizer_step(trainer, self, base)
        self.on_before_optimizer_step(base)
        self.configure_gradient_clipping(
            base,
            gradient_clip_val=trainer.gradient_clip_val,
            gradient_clip_algorithm=trainer.gradient_clip_algorithm,
        )
