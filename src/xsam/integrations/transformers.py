"""Hugging Face ``Trainer``: :class:`SAMTrainer` runs one whole SAM-family update per optimizer
step.

Use it in place of ``transformers.Trainer``, with either

* ``optimizers=(xsam.XSAM(...), scheduler_or_None)``, as for any custom optimizer, or
* ``sam="xsam"`` (or ``"sam"``) and ``sam_kwargs={...}``: the base optimizer is the one the
  ``TrainingArguments`` configure (``optim``, ``learning_rate``, ``weight_decay``, ... or the
  Trainer's ``optimizer_cls_and_kwargs``), wrapped; ``model=`` defaults to the model.

Everything else comes from the ``TrainingArguments``, unchanged:

* ``gradient_accumulation_steps``: every pass of the update (clean, each ascent point, each
  α probe) covers every micro-batch of the step, each scaled as the Trainer scales it;
* ``bf16`` / ``fp16``: the passes run under the Accelerator's autocast, and fp16 losses are
  scaled by its GradScaler, which also steps the base optimizer;
* ``max_grad_norm``: clips ``d``, the final direction (unscaled), just before the base
  optimizer steps. The ``grad_norm`` the Trainer logs is then the norm of the clipped ``d``;
* several processes (``torchrun``, through Accelerate's DDP): at the first training step the
  optimizer is attached to the wrapped model (:meth:`xsam.SAMFamily.attach`) with
  ``perturbation``: ``"local"`` (the default; each process ascends from its own micro-batches,
  the clean and ascent passes are not all-reduced, the ranks' directions ``d`` are averaged in
  one all-reduce) or ``"global"`` (every pass all-reduced on its last micro-batch: one process
  on the global batch); XSAM's probe losses are averaged over the processes, so every replica
  takes the same α and step. FSDP2 works with ``"global"`` only; FSDP1 is refused. The loss
  the gradients come from is the Trainer's own, scaled as it scales it (for a model whose
  ``forward`` takes ``**kwargs`` the Trainer multiplies it by the number of processes): see
  docs/multi-gpu.md;
* the logged ``loss`` is the clean loss (the first pass of every micro-batch).

How: the Trainer's own ``training_step`` runs the clean pass of each micro-batch (forward,
loss scaling, backward). At the last micro-batch of the step, :meth:`SAMTrainer.training_step`
runs the ascent passes (the Trainer's ``training_step`` again, on every kept micro-batch), the
forward-only α probes and the descent, which steps the base optimizer once. The Trainer then
clips and calls ``optimizer.step()`` as usual: that optimizer is a stand-in that checks the
update was applied in the training step and does nothing else (the update is applied exactly
once per optimizer step).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

from .. import optim as _optim
from ..distributed import attach_wrapped, check_perturbation, clean_pass_sync
from .core import finish_update, norm_clip, require, sam_optimizer

transformers = require("transformers", "transformers")

__all__ = ["SAMTrainer"]

_WRAPPERS = {"sam": _optim.SAM, "xsam": _optim.XSAM}


class _UpdateApplied(torch.optim.Optimizer):
    """What the Trainer steps: the SAM-family optimizer's param groups and state (so LR
    schedulers and checkpoints work as usual), with a ``step()`` that only checks that
    :meth:`SAMTrainer.training_step` applied this step's update."""

    def __init__(self, sam: _optim.SAMFamily) -> None:
        # torch.optim.Optimizer.__init__ insists on parameters of its own: a placeholder
        self.optimizer = None
        super().__init__([torch.zeros(0, requires_grad=True)], {})
        self.optimizer = sam
        self.param_groups = sam.param_groups
        self.state = sam.state
        self.defaults = sam.defaults
        self.pending = False

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise RuntimeError("SAMTrainer's optimizer takes no closure")
        if not self.pending:
            raise RuntimeError(
                "SAMTrainer: optimizer.step() was called without a SAM-family update in the "
                "training step; the update runs in SAMTrainer.training_step (do not override it "
                "without calling super().training_step)"
            )
        self.pending = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.optimizer.load_state_dict(state_dict)
        self.param_groups = self.optimizer.param_groups
        self.state = self.optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.optimizer is None:  # the placeholder, during __init__
            super().add_param_group(param_group)
        else:
            self.optimizer.add_param_group(param_group)


class SAMTrainer(transformers.Trainer):
    """``transformers.Trainer`` whose optimizer step is one whole SAM-family update.

    ``sam``: ``None`` (the optimizer passed in ``optimizers=`` must be an ``xsam.SAM`` /
    ``xsam.XSAM``), ``"sam"`` or ``"xsam"`` (wrap the optimizer the arguments configure);
    ``sam_kwargs``: the wrapper's settings (``rho``, ``alpha``, ``alpha_every``, ...);
    ``perturbation``: ``"local"`` or ``"global"`` with several processes (``None``: the
    optimizer's own, ``"local"`` by default; ignored in one process)."""

    def __init__(
        self,
        *args: Any,
        sam: str | None = None,
        sam_kwargs: dict[str, Any] | None = None,
        perturbation: str | None = None,
        **kwargs: Any,
    ) -> None:
        if sam is not None and sam not in _WRAPPERS:
            raise ValueError(f"SAMTrainer: sam must be None, 'sam' or 'xsam', got {sam!r}")
        if sam is None and sam_kwargs:
            raise ValueError("SAMTrainer: sam_kwargs needs sam='sam' or sam='xsam'")
        super().__init__(*args, **kwargs)
        self._sam_spec = sam
        self._sam_kwargs = dict(sam_kwargs or {})
        # the model is wrapped (DDP) after the optimizer is built: the mode waits for attach()
        asked = self._sam_kwargs.pop("perturbation", None)
        if asked is not None and perturbation is not None and asked != perturbation:
            raise ValueError(
                f"SAMTrainer: perturbation={perturbation!r} and sam_kwargs perturbation="
                f"{asked!r} disagree; give it once"
            )
        self._sam_perturbation = perturbation if perturbation is not None else asked
        check_perturbation(self._sam_perturbation, "SAMTrainer")
        self._sam_window: list[tuple[dict[str, Any], Any]] = []
        self._sam_stand_in: _UpdateApplied | None = None

    # ------------------------------------------------------------------ the optimizer
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self._sam_spec is not None:
            self._build_sam(model if model is not None else self.model)
        opt = super().create_optimizer(model) if self.optimizer is None else self.optimizer
        if not isinstance(opt, _UpdateApplied):
            sam = sam_optimizer(opt, "SAMTrainer (optimizers=, or sam='xsam')")
            self.optimizer = self._sam_stand_in = _UpdateApplied(sam)
        return self.optimizer

    def _build_sam(self, model: torch.nn.Module) -> None:
        base_cls, base_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
            self.args, model
        )
        wrapper, settings = _WRAPPERS[self._sam_spec], {"model": model, **self._sam_kwargs}

        class Build(wrapper):  # an Optimizer class to the Trainer, which passes its groups
            def __new__(cls, groups: Any, **kwargs: Any) -> _optim.SAMFamily:
                return wrapper(groups, base_cls, base_kwargs=kwargs, **settings)

        saved = self.optimizer_cls_and_kwargs
        self.optimizer_cls_and_kwargs = (Build, dict(base_kwargs))
        try:
            super().create_optimizer(model)
        finally:
            self.optimizer_cls_and_kwargs = saved

    @property
    def sam_optimizer(self) -> _optim.SAMFamily:
        """The SAM-family optimizer (available once training has started)."""
        if self._sam_stand_in is None:
            raise RuntimeError("SAMTrainer: the optimizer is created when training starts")
        return self._sam_stand_in.optimizer

    # ------------------------------------------------------------------ the update
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        """The clean pass of one micro-batch (the Trainer's own ``training_step``); at the last
        micro-batch of the step, the rest of the update over every micro-batch."""
        sam = self.sam_optimizer
        if self.accelerator.num_processes > 1:  # the optimizer learns the wrapped model
            attach_wrapped(sam, model, self._sam_perturbation, "SAMTrainer")
        kept = dict(inputs)  # compute_loss may pop from the dict it is given
        first = not self._sam_window
        # the first micro-batch records BN statistics; every one is kept local under DDP with
        # local perturbation (the Trainer syncs the last micro-batch of a step otherwise)
        with sam.clean_pass() if first else clean_pass_sync(sam):
            loss = super().training_step(model, dict(kept), num_items_in_batch)
        self._sam_window.append((kept, num_items_in_batch))
        if self.accelerator.sync_gradients:
            window, self._sam_window = self._sam_window, []
            self._sam_update(model, window)
        return loss

    def _sam_update(self, model: torch.nn.Module, window: list[tuple[dict[str, Any], Any]]) -> None:
        sam, accelerator = self.sam_optimizer, self.accelerator
        step = super().training_step

        def gradient_pass() -> None:
            for i, (inputs, items) in enumerate(window):
                last = i == len(window) - 1  # no all-reduce before the last micro-batch
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    step(model, dict(inputs), items)

        def probe_loss() -> Tensor:
            total: Tensor | float = 0.0
            for inputs, items in window:
                batch = self._prepare_inputs(dict(inputs))
                with self.compute_loss_context_manager():
                    total = total + self.compute_loss(model, batch, num_items_in_batch=items)
            # several processes: the attached optimizer averages the probe losses over them
            return torch.as_tensor(total)

        scaler = accelerator.scaler
        clip = norm_clip(self.args.max_grad_norm)  # the public xsam.clip_direction_norm's
        ok = finish_update(sam, gradient_pass, probe_loss, scaler=scaler, clip=clip)
        if ok and scaler is not None and scaler.is_enabled():
            # the Trainer unscales .grad once more before clipping and logging its norm: hand
            # it d in the scaled units it expects (its step() is the stand-in's, a no-op)
            grads = [p.grad for g in sam.param_groups for p in g["params"] if p.grad is not None]
            torch._foreach_mul_(grads, scaler.get_scale())
        assert self._sam_stand_in is not None
        self._sam_stand_in.pending = True
