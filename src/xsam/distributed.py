"""Multi-process behaviour of the SAM family: which passes synchronise gradients, which scalars
are reduced, and how every rank reaches the same decisions.

Three set-ups are recognised from the ``model=`` given to the optimizer:

* **single process** (or no ``model``): nothing is communicated.
* **DDP** (``model`` is a ``DistributedDataParallel``):

  - ``perturbation="local"`` (default, as the SAM paper's m-sharpness and Composer): every rank
    ascends from its own mini-batch. The clean and ascent passes run inside ``model.no_sync()``
    (forward and backward), so no gradient is all-reduced until the end. SAM (α = 1) lets DDP
    all-reduce the last gradient g_k as usual (its overlap with the backward is kept); XSAM
    computes each rank's own ``d_r = ‖g_k,r‖·v_r(α*)`` and averages the d_r with one
    all-reduce, so the update is the mean of the per-rank XSAM directions.
  - ``perturbation="global"``: DDP all-reduces every pass, so every rank holds the gradient of
    the global batch and the update equals single-process training on the concatenated batch.

* **FSDP** (parameters are ``DTensor`` shards, e.g. from ``torch.distributed.fsdp.fully_shard``):
  gradients are reduce-scattered by FSDP in every pass, so only ``"global"`` perturbation
  exists. Norms and the v₀/v₁ angle are sums over shards, completed with one all-reduce of a
  few scalars; the vector work runs on the local shards.

A framework that wraps the model after the optimizer is built (Lightning, the Hugging Face
Trainer, Accelerate) hands the wrapper over with ``opt.attach(wrapper, perturbation)``; the
integrations do it themselves (:func:`attach_wrapped`), and keep a clean pass's micro-batches
local with :func:`clean_pass_sync`. docs/multi-gpu.md says what each mode all-reduces.

In every set-up the α probes' losses are averaged over ranks before the arg-max, and the
"every pass was finite" flag is agreed (a non-finite pass on one rank skips the update on all),
so replicas never drift apart.

BatchNorm: with ``model=`` the running statistics still change only in the clean pass. Plain
BatchNorm normalises with each rank's local batch statistics in every pass (and DDP broadcasts
rank 0's buffers at each forward, as always); SyncBatchNorm computes global batch statistics in
every pass, probes included, which costs one collective per layer and forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Distribution",
    "attach_wrapped",
    "check_perturbation",
    "clean_pass_sync",
    "local_tensor",
    "resolve_distribution",
]

PERTURBATIONS = ("local", "global")


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover - torch without distributed
        return None
    return DTensor


def local_tensor(t: Tensor) -> Tensor:
    """The local shard of a DTensor (sharing storage), or the tensor itself."""
    dt = _dtensor_type()
    if dt is not None and isinstance(t, dt):
        return t.to_local()
    return t


def _is_ddp(model: nn.Module | None) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


class Distribution:
    """How one optimizer communicates; built by :func:`resolve_distribution`."""

    def __init__(
        self, kind: str, perturbation: str, model: nn.Module | None, group: Any = None
    ) -> None:
        self.kind = kind  # "none" | "ddp" | "fsdp"
        self.perturbation = perturbation
        self.model = model
        self.group = group

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def world_size(self) -> int:
        if not self.active:
            return 1
        import torch.distributed as dist

        return dist.get_world_size(self.group)

    def _all_reduce(self, t: Tensor, op: str) -> Tensor:
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out, op=getattr(dist.ReduceOp, op), group=self.group)
        return out

    # --- scalars --------------------------------------------------------------------
    def sum_over_shards(self, t: Tensor) -> Tensor:
        """Partial sums of a sharded vector → global sums (FSDP only)."""
        return self._all_reduce(t, "SUM") if self.kind == "fsdp" else t

    def mean_over_ranks(self, t: Tensor) -> Tensor:
        if not self.active:
            return t
        return self._all_reduce(t, "SUM") / self.world_size

    def agree_all(self, flag: Tensor) -> Tensor:
        """True on every rank only if it is true on every rank."""
        if not self.active:
            return flag
        return self._all_reduce(flag.to(torch.int32), "MIN").bool()

    # --- vectors --------------------------------------------------------------------
    @property
    def averages_direction(self) -> bool:
        """Local DDP perturbation: each rank's d is computed alone, then averaged."""
        return self.kind == "ddp" and self.perturbation == "local"

    def average_(self, tensors: list[Tensor], present: list[bool] | None = None) -> list[bool]:
        """In-place mean over ranks of a tensor list, with one all-reduce of a flat buffer.

        The list must be the same on every rank (same tensors, same order): a rank that has
        nothing for a tensor passes zeros, as DDP does for a parameter a rank did not use.
        ``present`` (one flag per tensor: did this rank have it?) travels in the same buffer;
        the result says which tensors some rank had."""
        if not tensors:
            return []
        import torch.distributed as dist

        flags = present if present is not None else [True] * len(tensors)
        dtype = torch.promote_types(tensors[0].dtype, torch.float32)
        for t in tensors:
            dtype = torch.promote_types(dtype, t.dtype)
        parts = [t.reshape(-1).to(dtype) for t in tensors]
        parts.append(torch.tensor(flags, dtype=dtype, device=tensors[0].device))
        flat = torch.cat(parts)
        dist.all_reduce(flat, group=self.group)
        n = len(tensors)
        used = [bool(v) for v in (flat[-n:] > 0).tolist()]
        flat = flat[:-n].div_(self.world_size)
        torch._foreach_copy_(
            tensors,
            [v.view_as(t) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)],
        )
        return used

    # --- passes ---------------------------------------------------------------------
    @contextlib.contextmanager
    def gradient_pass(self, *, synced: bool) -> Iterator[None]:
        """Context of one forward+backward: ``model.no_sync()`` for DDP passes whose gradient
        must stay local."""
        if self.kind == "ddp" and not synced:
            with self.model.no_sync():  # type: ignore[union-attr]
                yield
        else:
            yield


def _is_fsdp1(model: nn.Module | None) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except Exception:  # pragma: no cover - torch without distributed
        return False
    return model is not None and any(
        isinstance(m, FullyShardedDataParallel) for m in model.modules()
    )


def resolve_distribution(
    model: nn.Module | None, params: list[Tensor], perturbation: str | None
) -> Distribution:
    if perturbation is not None and perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
    if _is_fsdp1(model):
        raise ValueError(
            "FullyShardedDataParallel (FSDP1, flat parameters) is not supported: its flat "
            "shards hide the parameters' norms and angles; shard with FSDP2 "
            "(torch.distributed.fsdp.fully_shard) or use DistributedDataParallel"
        )
    dt = _dtensor_type()
    sharded = dt is not None and any(isinstance(p, dt) for p in params)
    if _is_ddp(model):
        return Distribution("ddp", perturbation or "local", model, model.process_group)  # type: ignore[union-attr]
    if sharded:
        if perturbation == "local":
            raise ValueError(
                "perturbation='local' is not possible with FSDP: gradients are sharded across "
                "ranks in every pass; use perturbation='global' (the default under FSDP)"
            )
        mesh = next(p.device_mesh for p in params if isinstance(p, dt))  # type: ignore[union-attr]
        return Distribution("fsdp", "global", model, mesh.get_group())
    if perturbation is not None:
        raise ValueError(
            f"perturbation={perturbation!r} needs model= a DistributedDataParallel module (or "
            "FSDP-sharded parameters); without one there is nothing to perturb locally or "
            "globally. A framework that wraps the model later takes the mode itself: "
            "SAMModule.sam_perturbation, SAMTrainer(perturbation=), sam_update(perturbation=), "
            "or opt.attach(wrapped_model, perturbation)"
        )
    return Distribution("none", "global", model)


def check_perturbation(value: Any, where: str) -> None:
    """An integration's perturbation setting: ``None``, ``"local"`` or ``"global"``, checked in
    one process too (where it is otherwise unused)."""
    if value is not None and value not in PERTURBATIONS:
        raise ValueError(f"{where}: perturbation must be None, 'local' or 'global', got {value!r}")


def clean_pass_sync(opt: Any) -> contextlib.AbstractContextManager[None]:
    """The synchronisation of one micro-batch of a clean pass, for an integration that
    records the statistics itself (``opt.clean_pass()`` around its first micro-batch): under
    DDP with local perturbation the gradient stays on the rank (``no_sync``), except on a
    perturbation schedule's cheap step, whose clean gradient is the update's."""
    dist_: Distribution = opt._dist
    return dist_.gradient_pass(synced=dist_.perturbation == "global" or not opt.perturb_due)


def attach_wrapped(opt: Any, model: nn.Module, perturbation: str | None, where: str) -> None:
    """``opt.attach(model, perturbation)`` for an integration running several processes,
    which must end with the optimizer knowing the wrapper: a model that is neither
    ``DistributedDataParallel`` nor FSDP2-sharded is refused (its passes would not be
    synchronised, or not the way the optimizer assumes), naming what was found."""
    if opt.model is model and opt._dist.active and perturbation in (None, opt.perturbation):
        return
    opt.attach(model, perturbation)
    if not opt._dist.active:
        raise RuntimeError(
            f"{where}: several processes, but the model the framework trains is a "
            f"{type(model).__name__}, neither DistributedDataParallel nor sharded by FSDP2 "
            "(fully_shard); use DDP (or FSDP2, global perturbation only): see docs/multi-gpu.md"
        )
