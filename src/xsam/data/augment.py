"""Batch-level data augmentation on ``(N, C, H, W)`` tensors, without torchvision.

Every operation draws one set of random numbers for the whole batch and applies it with tensor
indexing and masks, so there is no Python loop over images. Random numbers are drawn from the
given ``torch.Generator`` on that generator's device and then moved to the batch's device, so a
seed gives the same augmentations on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augment", "cutout", "normalize", "random_crop", "random_flip"]


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad each image by ``padding`` on every side, then crop back to ``H×W`` at an offset
    drawn uniformly per image (torchvision's ``RandomCrop(H, padding)``)."""
    if padding == 0:
        return x
    n, _, h, w = x.shape
    dev = _gen_device(generator, x)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # N, H', W', C
    rows = dy[:, None, None] + torch.arange(h, device=x.device)[None, :, None]
    cols = dx[:, None, None] + torch.arange(w, device=x.device)[None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=generator, device=_gen_device(generator, x)) < p
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(3), x)


def cutout(
    x: torch.Tensor, size: int, p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero a ``size×size`` square centred at a uniformly drawn pixel, clipped at the borders,
    in each image with probability ``p`` (DeVries & Taylor, 2017).

    The square covers rows ``[cy - size//2, cy - size//2 + size)`` (likewise columns): for even
    sizes exactly the original's ``[cy - size/2, cy + size/2)``.
    """
    if size == 0 or p == 0:
        return x
    n, _, h, w = x.shape
    dev = _gen_device(generator, x)
    apply = torch.rand(n, generator=generator, device=dev) < p
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    apply, y0, x0 = apply.to(x.device), (cy - size // 2).to(x.device), (cx - size // 2).to(x.device)
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= y0[:, None]) & (r < y0[:, None] + size)
    in_cols = (c >= x0[:, None]) & (c < x0[:, None] + size)
    box = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    return x.masked_fill(box[:, None], 0)


def normalize(
    x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an ``(N, C, H, W)`` batch."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if m.shape != (x.shape[1],) or s.shape != (x.shape[1],):
        raise ValueError(
            f"mean and std should have one entry per channel ({x.shape[1]}) but have shapes "
            f"{tuple(m.shape)} and {tuple(s.shape)}"
        )
    if not bool((s > 0).all()):
        raise ValueError(f"std should be > 0 but is: {s.tolist()}")
    return (x - m[:, None, None]) / s[:, None, None]


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding, horizontal flip and Cutout, applied in that order.

    ``Augment()`` (all off) is the identity. When ``mean`` and ``std`` are given to the call,
    the batch is normalised after flipping and before Cutout, so Cutout's zeros are the data
    set's mean colour, as in DeVries & Taylor's code; crop padding is black (zero pixels).

    Example::

        aug = Augment(crop_padding=4, flip=True, cutout_size=16, cutout_p=0.5)
        x = aug(x_uint8.float() / 255, generator, mean=ds.mean, std=ds.std)
    """

    crop_padding: int = 0
    flip: bool = False
    cutout_size: int = 0
    cutout_p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("crop_padding", "cutout_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} should be an int but is: {v!r}")
            if v < 0:
                raise ValueError(f"{name} should be >= 0 but is: {v}")
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip should be a bool but is: {self.flip!r}")
        if not 0.0 <= self.cutout_p <= 1.0:
            raise ValueError(f"cutout_p should be in [0, 1] but is: {self.cutout_p}")

    @classmethod
    def none(cls) -> Augment:
        """No augmentation."""
        return cls()

    @property
    def is_identity(self) -> bool:
        return (
            self.crop_padding == 0
            and not self.flip
            and (self.cutout_size == 0 or self.cutout_p == 0)
        )

    def __call__(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x should be a (N, C, H, W) batch but has shape {tuple(x.shape)}")
        x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        if mean is not None or std is not None:
            if mean is None or std is None:
                raise ValueError("pass both mean and std, or neither")
            x = normalize(x, mean, std)
        return cutout(x, self.cutout_size, self.cutout_p, generator)
