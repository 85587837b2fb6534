"""This process's place under ``torchrun``: rank 0 of 1 when there is no process group."""

from __future__ import annotations

import gc
import os
from typing import Any

import torch
from torch import nn

__all__ = ["Ranks", "close_process_group", "init_ranks"]


class Ranks:
    """This process's place under ``torchrun`` (rank 0 of 1 otherwise), and the few collective
    operations the trainer needs; each is a no-op in a single process."""

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

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (its tensors moved to the CPU), on rank 0; ``None`` on the
        others. In a single process: ``[obj]``."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        box: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(_to_cpu(obj), box, dst=0)
        return box

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


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def init_ranks(device_name: str) -> Ranks:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1): NCCL when the run
    uses CUDA, gloo otherwise. A group that already exists is used as it is."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    owned = False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and not str(device_name).startswith("cpu")
        dist.init_process_group("nccl" if cuda else "gloo")
        owned = True
    return Ranks(dist.get_rank(), dist.get_world_size(), owned)


def close_process_group(*, synchronise: bool) -> None:
    """Destroy the default process group without tearing gloo down mid-flight.

    First the objects that still hold the group are collected (a DistributedDataParallel
    module sits in reference cycles, so leaving its function is not enough), then — on a clean
    exit only (``synchronise``; after a failure another rank may never arrive) — every rank waits
    for the others, and only then is the group destroyed. Destroyed any earlier, the process
    sometimes aborted after the run had finished ("terminate called without an active
    exception": 3 of 12 two-process gloo runs of examples/ddp_torchrun.py, 0 of 16 with this
    order)."""
    import torch.distributed as dist

    gc.collect()
    if synchronise:
        dist.barrier()
    dist.destroy_process_group()
