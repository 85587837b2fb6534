"""Normalisation running statistics around a SAM-family update (kept out of the update math).

A SAM-family update runs several forward passes on the same batch
(the clean pass at θ₀, the ascent points, XSAM's α probes). Only the clean pass may move the
running statistics of BatchNorm-like layers; otherwise every update would count the batch
``k + 1`` times, at weights the model never takes (davda54/sam #17 #30 #40).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ["NormStatsSnapshot", "frozen_norm_stats", "norm_modules"]

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def norm_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that keep running statistics (BatchNorm, SyncBatchNorm,
    InstanceNorm with ``track_running_stats=True``, ...)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _NormBase) and m.track_running_stats and m.running_mean is not None
    ]


@contextlib.contextmanager
def frozen_norm_stats(model: nn.Module | None) -> Iterator[None]:
    """Run forward passes that use batch statistics (train mode) but leave every running
    statistic exactly as it was.

    ``_BatchNorm`` layers (BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants) are switched to
    ``track_running_stats=False`` for the duration: in train mode they then normalise with the
    batch statistics as before and neither read nor write the running buffers, so the pass costs
    nothing extra. Other layers with running statistics (InstanceNorm with tracking) always write
    them, so their buffers are copied before and restored after. Both are exact: the buffers are
    bit-identical afterwards, even if the body raises.
    """
    if model is None:
        yield
        return
    switched: list[_BatchNorm] = []
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in norm_modules(model):
        if isinstance(m, _BatchNorm):
            if m.training:
                m.track_running_stats = False
                switched.append(m)
        else:
            for name in _STATS:
                buf = getattr(m, name, None)
                if isinstance(buf, torch.Tensor):
                    saved.append((buf, buf.detach().clone()))
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def _live_stats(model: nn.Module) -> list[torch.Tensor]:
    """The running-statistics buffers ``model`` holds *now* (``module.to()``, ``.double()``,
    ``accelerator.prepare`` replace buffer tensors, so they are looked up at every use). The
    modules of :func:`norm_modules`, read through ``_buffers`` (one walk of the model, about
    80 µs for a ResNet-18 on a CPU)."""
    live = []
    for m in model.modules():
        if isinstance(m, _NormBase) and m.track_running_stats:
            bufs = m._buffers
            if bufs.get("running_mean") is not None:
                live += [b for name in _STATS if (b := bufs.get(name)) is not None]
    return live


class NormStatsSnapshot:
    """Keeps a copy of every running statistic of ``model`` so that an update that is skipped
    (non-finite loss or gradient) can put back what its clean pass wrote.

    The buffers are found in ``model`` at each :meth:`save` and :meth:`restore`, not once at
    construction: moving or converting the model (``model.to(device)``, ``.double()``,
    ``accelerator.prepare(model)``) replaces its buffer tensors while keeping its parameters, so
    buffers remembered from construction would no longer be the ones training writes. The
    copies are allocated once (again only when the buffers' shapes, dtypes or devices change)
    and refreshed with one ``_foreach_copy_`` per device and dtype."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._copies: list[torch.Tensor] = []
        # the buffers found at the last save and their copy groups: reused while a fresh look
        # finds the very same tensors (the common case), rebuilt when it does not
        self._seen: list[torch.Tensor] = []
        self._groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def __len__(self) -> int:
        return len(_live_stats(self.model))

    @torch.no_grad()
    def save(self) -> None:
        live = _live_stats(self.model)
        if len(live) != len(self._seen) or any(a is not b for a, b in zip(live, self._seen)):
            if not _same_layout(self._copies, live):
                self._copies = [torch.empty_like(b) for b in live]
            self._seen, self._groups = live, _grouped(self._copies, live)
        for dst, src in self._groups:
            torch._foreach_copy_(dst, src)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the statistics of the last :meth:`save` (into the buffers the model holds
        now, converted if it was moved in between)."""
        live = _live_stats(self.model)
        if [b.shape for b in live] != [c.shape for c in self._copies]:
            raise RuntimeError(
                "the normalisation layers of the model changed between saving and restoring "
                f"their running statistics ({len(self._copies)} buffers saved, {len(live)} now)"
            )
        for dst, src in _grouped(live, self._copies):
            torch._foreach_copy_(dst, src)


def _same_layout(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device for x, y in zip(a, b)
    )


def _grouped(
    dst: list[torch.Tensor], src: list[torch.Tensor]
) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """``(dst, src)`` pairs split by device and dtype: one ``_foreach_copy_`` each."""
    groups: dict[tuple[Any, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for d, s in zip(dst, src, strict=True):
        g = groups.setdefault((d.device, d.dtype, s.device, s.dtype), ([], []))
        g[0].append(d)
        g[1].append(s)
    return list(groups.values())
