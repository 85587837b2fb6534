"""Which passes of an update touch the normalisation running statistics and synchronise
gradients: the clean pass records the statistics (so a skipped or abandoned update can put
them back) and the perturbed passes leave them untouched; under DDP each pass is synced or
kept local as the perturbation mode requires (:mod:`xsam.distributed`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..norm_stats import NormStatsSnapshot, frozen_norm_stats


class PassContexts:
    """The pass contexts and statistics snapshot of :class:`~xsam.optim._core.SAMFamily`
    (a mixin). ``_norm_snapshot``: made for ``self.model`` when used; ``_stats_saved``: it
    holds this update's statistics."""

    _norm_snapshot: NormStatsSnapshot | None = None
    _stats_saved = False

    @contextlib.contextmanager
    def clean_pass(self) -> Iterator[None]:
        """Wrap the forward+backward at θ₀ in this (lower-level path). With ``model=`` it
        records the normalisation running statistics first, so that a skipped or abandoned
        update can put them back; under DDP with local perturbation it keeps the gradient
        local (``no_sync``)."""
        self._save_stats()
        synced = self._dist.perturbation == "global" or not self.perturb_due
        with self._dist.gradient_pass(synced=synced):
            yield

    @contextlib.contextmanager
    def perturbed_pass(self) -> Iterator[None]:
        """Wrap the forward+backward at each ascent point in this (lower-level path): running
        statistics are left untouched (with ``model=``), and under DDP the gradient is synced
        or kept local as the perturbation mode requires."""
        u = self._update
        final = u is not None and u.ascents == self.steps
        synced = self._dist.perturbation == "global" or (final and self._direction_is_gk())
        with frozen_norm_stats(self.model), self._dist.gradient_pass(synced=synced):
            yield

    def _save_stats(self) -> None:
        """Record the running statistics of ``self.model`` as it is now (its buffers are looked
        up at each save, so a model moved or converted after construction is followed)."""
        if self.model is None:
            self._stats_saved = False
            return
        snap = self._norm_snapshot
        if snap is None or snap.model is not self.model:
            snap = self._norm_snapshot = NormStatsSnapshot(self.model)
        snap.save()
        self._stats_saved = True

    def _restore_stats(self) -> None:
        if self._norm_snapshot is not None and self._stats_saved:
            self._norm_snapshot.restore()
        self._stats_saved = False
