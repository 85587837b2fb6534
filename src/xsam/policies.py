"""What varies around a SAM-family update, kept out of the update math.

Normalisation statistics: a SAM-family update runs several forward passes on the same batch
(the clean pass at θ₀, the ascent points, XSAM's α probes). Only the clean pass may move the
running statistics of BatchNorm-like layers; otherwise every update would count the batch
``k + 1`` times, at weights the model never takes (davda54/sam #17 #30 #40).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

__all__ = ["NormStatsSnapshot", "frozen_norm_stats", "norm_modules"]


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
            for name in ("running_mean", "running_var", "num_batches_tracked"):
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


class NormStatsSnapshot:
    """Keeps a copy of every running statistic of ``model`` so that an update that is skipped
    (non-finite loss or gradient) can put back what its clean pass wrote. The copies live in
    buffers allocated once and refreshed with one ``_foreach_copy_`` per device and dtype."""

    def __init__(self, model: nn.Module) -> None:
        self._live: list[torch.Tensor] = []
        for m in norm_modules(model):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                buf = getattr(m, name, None)
                if isinstance(buf, torch.Tensor):
                    self._live.append(buf)
        self._copies = [b.detach().clone() for b in self._live]

    def __len__(self) -> int:
        return len(self._live)

    @torch.no_grad()
    def save(self) -> None:
        if self._live:
            _copy_lists(self._copies, self._live)

    @torch.no_grad()
    def restore(self) -> None:
        if self._live:
            _copy_lists(self._live, self._copies)


def _copy_lists(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]]
    groups = {}
    for d, s in zip(dst, src, strict=True):
        g = groups.setdefault((d.device, d.dtype), ([], []))
        g[0].append(d)
        g[1].append(s)
    for d_list, s_list in groups.values():
        torch._foreach_copy_(d_list, s_list)
