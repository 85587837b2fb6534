"""A resumable, shardable batch iterator over an in-memory uint8 image tensor."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .augment import Augment, normalize

__all__ = ["BatchLoader", "stratified_indices", "stratified_subset"]


def stratified_indices(
    y: torch.Tensor, per_class: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sorted indices of ``per_class`` examples of every class ``0 .. y.max()``, drawn uniformly
    without replacement. Raises ``ValueError`` if a class has fewer examples."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class should be an int >= 1 but is: {per_class!r}")
    y = y.cpu()
    perm = torch.randperm(len(y), generator=generator)
    shuffled = y[perm]
    chosen = []
    for c in range(int(y.max()) + 1 if len(y) else 0):
        members = perm[shuffled == c]
        if len(members) < per_class:
            raise ValueError(
                f"class {c} has {len(members)} examples, fewer than per_class={per_class}"
            )
        chosen.append(members[:per_class])
    return torch.cat(chosen).sort().values if chosen else perm[:0]


def stratified_subset(
    x: torch.Tensor, y: torch.Tensor, per_class: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` examples of every class, in their original order (see
    :func:`stratified_indices`)."""
    if len(x) != len(y):
        raise ValueError(f"x and y should have the same length but have {len(x)} and {len(y)}")
    idx = stratified_indices(y, per_class, generator)
    return x[idx.to(x.device)], y[idx.to(y.device)]


class BatchLoader:
    """Yields ``(x, y)`` batches: ``x`` float32 ``x_uint8 / 255``, augmented, normalised.

    The whole data set stays one tensor on ``device``; each epoch is one ``randperm`` of it.

    Reproducibility: the permutation of epoch ``e`` and the augmentation random numbers of
    epoch ``e`` on rank ``r`` come from generators seeded by ``(seed, e)`` and
    ``(seed, e, r)``, so any epoch can be regenerated without replaying earlier ones.
    :meth:`state_dict` records the seed, the epoch, the position within it and (mid-epoch) the
    augmentation generator's state; a loader restored from it yields exactly the batches the
    original would have yielded next.

    Sharding: with ``world_size`` ranks, each epoch uses the first
    ``world_size * (N // world_size)`` entries of the shared permutation and rank ``r`` takes
    every ``world_size``-th from position ``r``. So the ranks' slices are disjoint and equal, and
    batch ``b`` of all ranks together is the permutation's slice
    ``[b * B * world_size, (b + 1) * B * world_size)``: the same global batches as one process
    with batch size ``B * world_size``.

    Iterating gives the rest of the current epoch; the next ``iter`` starts the next epoch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: Augment | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x should be uint8 (N, C, H, W) but is {x.dtype} {tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y should have shape ({x.shape[0]},) but has {tuple(y.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size should be an int >= 1 but is: {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank should be in [0, world_size) with world_size >= 1 but is: rank={rank}, "
                f"world_size={world_size}"
            )
        if x.shape[0] < world_size:
            raise ValueError(f"{x.shape[0]} examples cannot be split over {world_size} ranks")
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std, or neither")
        device = torch.device(device) if device is not None else x.device
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment = augment if augment is not None and not augment.is_identity else None
        self.mean, self.std = mean, std
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.device = device
        self._epoch, self._batch = 0, 0
        self._aug_gen: torch.Generator | None = None

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to (0-based)."""
        return self._epoch + (self._batch >= len(self))

    @property
    def num_samples(self) -> int:
        """Examples this rank visits per epoch (before ``drop_last``)."""
        return self.x.shape[0] // self.world_size

    def __len__(self) -> int:
        m, b = self.num_samples, self.batch_size
        return m // b if self.drop_last else math.ceil(m / b)

    def _generator(self, *stream: object) -> torch.Generator:
        digest = hashlib.sha256(repr((self.seed, *stream)).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """The data-set indices this rank visits in ``epoch`` (default: the current one), in
        order, before ``drop_last``."""
        epoch = self.epoch if epoch is None else epoch
        n = self.x.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=self._generator("permutation", epoch))
        else:
            order = torch.arange(n)
        return order[self.rank : self.num_samples * self.world_size : self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch on the next ``iter``."""
        self._epoch, self._batch, self._aug_gen = int(epoch), 0, None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._batch >= len(self):  # the previous pass ended without closing its epoch
            self.set_epoch(self._epoch + 1)
        if self._batch == 0 or self._aug_gen is None:
            self._aug_gen = self._generator("augment", self._epoch, self.rank)
        order = self.indices(self._epoch).to(self.device)
        while self._batch < len(self):
            sel = order[self._batch * self.batch_size : (self._batch + 1) * self.batch_size]
            x = self.x[sel].float().div_(255)
            if self.augment is not None:
                x = self.augment(x, self._aug_gen, mean=self.mean, std=self.std)
            elif self.mean is not None:
                x = normalize(x, self.mean, self.std)
            self._batch += 1
            yield x, self.y[sel]
        self.set_epoch(self._epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: ``seed``, ``epoch``, ``batch`` (batches of the epoch already
        yielded) and, mid-epoch, ``augment_rng`` (the augmentation generator's state)."""
        epoch, batch = self._epoch, self._batch
        if batch >= len(self):
            epoch, batch = epoch + 1, 0
        rng = self._aug_gen.get_state() if batch > 0 and self._aug_gen is not None else None
        return {"seed": self.seed, "epoch": epoch, "batch": batch, "augment_rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`'s output (including its seed)."""
        missing = {"seed", "epoch", "batch"} - state.keys()
        if missing:
            raise ValueError(f"loader state is missing keys: {sorted(missing)}")
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"])
        self._batch = int(state["batch"])
        if self._batch > 0:
            rng = state.get("augment_rng")
            if rng is None:
                raise ValueError("a mid-epoch loader state needs 'augment_rng'")
            self._aug_gen = torch.Generator()
            self._aug_gen.set_state(rng)
