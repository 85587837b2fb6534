"""Synthetic label noise, the standard way to create a regime where a network can memorise
wrong labels (Zhang et al., "Understanding deep learning requires rethinking generalization",
ICLR 2017) and where sharpness-aware training is known to help (Foret et al., ICLR 2021,
Table 4).

Two kinds, as defined in the noisy-label literature (Han et al., "Co-teaching: Robust Training
of Deep Neural Networks with Extremely Noisy Labels", NeurIPS 2018, §4.1):

* ``"symmetric"``: a flipped label is replaced by one of the *other* K − 1 classes, uniformly;
* ``"pair"`` (pair flipping): a flipped label ``c`` becomes ``(c + 1) mod K``, a structured
  noise in which each class is confused with one neighbour.

Exactly ``round(rate · n)`` examples are flipped, chosen uniformly without replacement, so the
flipped fraction is the requested one up to 1/n. Everything is drawn from a generator seeded
with ``seed`` alone: the noise is a function of (labels, rate, kind, seed), identical for every
method and every run seed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["NOISE_TYPES", "noisy_labels"]

NOISE_TYPES = ("symmetric", "pair")


def noisy_labels(
    labels: torch.Tensor,
    rate: float,
    *,
    kind: str = "symmetric",
    num_classes: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A copy of ``labels`` with a fraction ``rate`` of them flipped to a wrong class.

    Args:
        labels: 1-D integer class labels in ``[0, num_classes)``.
        rate: the fraction to flip, in ``[0, 1]`` (``0`` returns an unchanged copy).
        kind: ``"symmetric"`` or ``"pair"`` (see the module docstring).
        num_classes: K; default ``labels.max() + 1``. Must be >= 2 when ``rate > 0``.
        seed: seed of the noise's own generator.

    Returns:
        A new tensor (same dtype and device); ``labels`` is not modified.
    """
    if kind not in NOISE_TYPES:
        raise ValueError(f"kind must be one of {NOISE_TYPES}, got {kind!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a number in [0, 1], got {rate!r}")
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    k = int(labels.max()) + 1 if num_classes is None and len(labels) else int(num_classes or 0)
    out = labels.clone()
    n_flip = math.floor(rate * len(labels) + 0.5)
    if n_flip == 0:
        return out
    if k < 2:
        raise ValueError(f"label noise needs at least 2 classes, got num_classes={k}")
    g = torch.Generator().manual_seed(int(seed))
    chosen = torch.randperm(len(labels), generator=g)[:n_flip]
    old = labels.cpu()[chosen]
    if kind == "pair":
        new = (old + 1) % k
    else:
        new = (old + torch.randint(1, k, (n_flip,), generator=g)) % k
    out[chosen.to(out.device)] = new.to(out.device, out.dtype)
    return out
