"""Argument validation shared by the analysis tools, on the rules of :mod:`xsam.checks` (name,
rule and value in every message)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .. import checks
from .vectors import LossFn


def real(name: str, value: Any, *, low: float = -math.inf, strict: bool = False) -> float:
    return checks.real(name, value, low=low, strict=strict)  # the optimizers' own rule


def integer(name: str, value: Any, *, low: int) -> int:
    return checks.integer(name, value, low=low, typed=True)  # TypeError for a non-int


def loss_function(loss_fn: Any) -> LossFn:
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a callable loss_fn(model) -> scalar tensor, got {loss_fn!r}"
        )
    return loss_fn


def alpha_grid(grid: Sequence[float] | None, default: Sequence[float]) -> list[float]:
    if grid is None:
        return [float(a) for a in default]
    try:
        values = [real("alpha_grid entry", a) for a in grid]
    except TypeError as err:
        raise TypeError(f"alpha_grid must be a sequence of real numbers: {err}") from None
    if not values:
        raise ValueError("alpha_grid must not be empty")
    return sorted(set(values))


def rho_pair(rho: Any, rho_max: Any) -> tuple[float, float]:
    rho = real("rho", rho, low=0.0, strict=True)
    rho_max = 2.0 * rho if rho_max is None else real("rho_max", rho_max, low=0.0, strict=True)
    return rho, rho_max
