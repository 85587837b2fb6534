"""Perturbation schedules: full sharpness-aware updates on some steps, cheap steps on the rest.

A full SAM-family update costs ``k + 1`` forward/backward passes; a *cheap* step costs one: the
clean pass, then the base optimizer steps with the clean gradient ``g`` (or, with ``reuse``,
with ``g`` plus a remembered sharpness-aware correction, below). :class:`PerturbationSchedule`
says which steps are full. It is a pure function of the step index (and a seed), so every DDP
rank takes the same decision without communicating and a resumed run continues exactly.

``every=n``
    a full update on steps ``start, start + n, start + 2n, ...`` (Composer's SAM ``interval``,
    LookSAM's ``k``).
``start=s``
    plain steps before step ``s``, then the full method ("late-phase" SAM).
``prob=p``
    each step (from ``start``, on the ``every`` grid) is full with probability ``p``, drawn from
    ``seed`` and the step index: randomised switching between SAM and the base optimizer.
``reuse=λ``
    LookSAM's reuse (Liu et al., *Towards Efficient and Scalable Sharpness-Aware
    Minimization*, CVPR 2022, Alg. 1, its non-layer-wise form): at each full update keep the
    unit vector ``v`` of the part of the update direction orthogonal to the clean gradient,
    ``d − (⟨d, g₀⟩/‖g₀‖²)·g₀``; on each cheap step use ``g + λ·‖g‖·v``. LookSAM takes SAM's
    ``d = g_k``; here ``d`` is the variant's own direction, so for XSAM it is
    ``‖g_k‖·v(α*)`` — the explicit estimate of the ascent direction, whose orthogonal part is
    what is reused. LookSAM's authors use ``λ`` of about 0.7 (their ``α``). The vector lives in
    the parameters' own coordinates (also under ``adaptive=True``). Costs one parameter-sized
    buffer.

The step index counts every ``step()`` / ``descent_step()`` call, applied or skipped, full or
cheap. ``PerturbationSchedule()`` (the default) makes every step full: today's update, bit for
bit; a schedule whose steps are all cheap and ``reuse=0`` is the base optimizer, bit for bit.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from ..checks import in_range, integer, real
from ._docs import render

__all__ = ["PerturbationSchedule"]


@dataclass(frozen=True)
class PerturbationSchedule:
    """Which steps get the full sharpness-aware update (see the module docstring).

    Args:
        every: a full update every ``every``-th step (``>= 1``; 1 = every step).
        start: the first step that may be full (``>= 0``); plain steps before it.
        prob: probability that a step on the grid is full (``0 <= prob <= 1``).
        seed: the seed of the ``prob`` draws (the same on every rank).
        reuse: LookSAM's ``λ`` (``>= 0``; 0 = cheap steps are plain base steps).

    References:
        ${ref_looksam}
    """

    every: int = 1
    start: int = 0
    prob: float = 1.0
    seed: int = 0
    reuse: float = 0.0

    def __post_init__(self) -> None:
        integer("every", self.every, low=1)
        integer("start", self.start, low=0)
        integer("seed", self.seed, low=0)
        object.__setattr__(self, "prob", in_range("prob", self.prob, 0.0, 1.0))
        object.__setattr__(self, "reuse", real("reuse", self.reuse, low=0.0))

    @classmethod
    def late_phase(cls, fraction: float, total_steps: int, **kwargs: Any) -> PerturbationSchedule:
        """Plain steps for the first ``fraction`` of ``total_steps``, the full method after."""
        fraction = in_range("fraction", fraction, 0.0, 1.0)
        total = integer("total_steps", total_steps, low=1)
        return cls(start=round(fraction * total), **kwargs)

    @property
    def always(self) -> bool:
        """Every step is full (the plain SAM-family update)."""
        return self.every == 1 and self.start == 0 and self.prob == 1.0

    def full(self, index: int) -> bool:
        """Whether step ``index`` (0-based) is a full update."""
        if index < self.start or (index - self.start) % self.every:
            return False
        if self.prob >= 1.0:
            return True
        if self.prob <= 0.0:
            return False
        # A generator seeded from (seed, index): the same draw on every rank and after resume.
        return random.Random(f"xsam-schedule:{self.seed}:{index}").random() < self.prob

    def expected_share(self, total_steps: int) -> float:
        """The expected fraction of full updates over ``total_steps`` steps."""
        total = integer("total_steps", total_steps, low=1)
        grid = len(range(self.start, total, self.every))
        return grid * self.prob / total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: Any) -> PerturbationSchedule:
        """``None`` (every step full), a schedule, or a mapping of its fields."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(f"schedule has unknown field(s) {unknown}")
            return cls(**value)
        raise TypeError(
            f"schedule must be a PerturbationSchedule, a dict of its fields or None, got "
            f"{type(value).__name__}"
        )


PerturbationSchedule.__doc__ = render(PerturbationSchedule.__doc__)
