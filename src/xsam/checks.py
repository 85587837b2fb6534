"""The rules the arguments of xsam's public functions follow, written once, with one message
format: ``<name> must be <rule>, got <value>``.

Every check raises :class:`ArgumentError` (a ``ValueError``), or :class:`ArgumentTypeError`
(a ``TypeError``) where the type is wrong, before anything is changed; both are a
:class:`BadArgument`. The error keeps the
argument's ``name``, its ``value``, the ``rule`` and which part of it failed (``kind``:
``"type"``, ``"finite"`` or ``"range"``, with the ``bound`` of a range), so that a caller
with its own error type (``xsam.train.TrainConfig``) reports the same rule in its own words.
Used by the optimizers (``xsam.optim``), the perturbation schedule, the analysis tools and
the training configuration. Imports no torch (``xsam --help`` reads the configuration without
it): a tensor can only be passed once torch is imported.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BadArgument",
    "adaptive_eta",
    "as_real",
    "in_range",
    "integer",
    "real",
]


class BadArgument(Exception):
    """A bad argument: ``name`` must be ``rule``, got ``value``."""

    def __init__(
        self, name: str, rule: str, value: Any, *, kind: str = "range", bound: str = "",
        shown: str | None = None,
    ) -> None:  # fmt: skip
        self.name, self.rule, self.value, self.kind, self.bound = name, rule, value, kind, bound
        super().__init__(f"{name} must be {rule}, got {repr(value) if shown is None else shown}")


class ArgumentError(BadArgument, ValueError):
    """A bad argument's value."""


class ArgumentTypeError(BadArgument, TypeError):
    """A bad argument's type."""

    def __init__(self, name: str, rule: str, value: Any, *, shown: str | None = None) -> None:
        super().__init__(name, rule, value, kind="type", shown=shown)


def _typed(value: Any) -> str:
    return f"{type(value).__name__}: {value!r}"


def as_real(name: str, value: Any, *, plain: bool = False) -> float:
    """``value`` as a Python float: ints, floats, NumPy scalars and one-element real tensors
    are accepted (``plain``: Python ints and floats only); bools, strings, complex numbers and
    other objects are refused."""
    rule = "a real number"
    torch = sys.modules.get("torch")
    if not plain and torch is not None and isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            shown = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            raise ArgumentTypeError(name, rule, value, shown=shown)
        if value.is_meta:
            raise ArgumentTypeError(name, rule, value, shown="a meta tensor (it has no value)")
        return float(value.detach().cpu().item())
    kinds = (int, float) if plain else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ArgumentTypeError(name, rule, value, shown=_typed(value))
    return float(value)


def real(
    name: str, value: Any, *, low: float = -math.inf, strict: bool = False, plain: bool = False
) -> float:
    """A finite real ``> low`` (``strict``) or ``>= low``, as a float (``plain``: see
    :func:`as_real`)."""
    v = as_real(name, value, plain=plain)
    bound = f"> {low:g}" if strict else f">= {low:g}"
    if not math.isfinite(v):
        raise ArgumentError(name, f"finite and {bound}", v, kind="finite", bound=bound)
    if v <= low if strict else v < low:
        raise ArgumentError(name, f"finite and {bound}", v, bound=bound)
    return v


def in_range(name: str, value: Any, low: float, high: float) -> float:
    """A real in the closed interval ``[low, high]``, as a float."""
    v = as_real(name, value)
    if not low <= v <= high:
        bound = f"in [{low:g}, {high:g}]"
        raise ArgumentError(name, bound, value, bound=bound)
    return v


def integer(
    name: str,
    value: Any,
    *,
    low: int | None,
    typed: bool = False,
    integral_floats: bool = False,
    or_none: bool = False,
) -> Any:
    """An ``int`` (not a bool) ``>= low`` (no bound when ``low`` is ``None``).

    The rule reads ``an integer >= low`` (a ``ValueError`` whatever failed); ``typed``: the
    type is a rule of its own (:class:`ArgumentTypeError`, ``an int``) and the range reads
    ``>= low``. ``integral_floats``: ``2.0`` counts as ``2``. ``or_none``: ``None`` passes."""
    if or_none and value is None:
        return None
    suffix = " or None" if or_none else ""
    rule = ("an integer" if low is None else f"an integer >= {low}") + suffix
    if integral_floats and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        if typed:
            raise ArgumentTypeError(name, "an int", value, shown=_typed(value))
        raise ArgumentError(name, rule, value, kind="type")
    if low is not None and value < low:
        bound = f">= {low}"
        raise ArgumentError(name, bound if typed else rule, value, bound=bound)
    return value


def adaptive_eta(name: str, eta: Any, adaptive: Any) -> None:
    """XSAM with ``adaptive=True`` needs ``eta > 0``: it maps the direction back through
    ``1/(|θ|+η)``, which is 0/0 where θ = 0 and η = 0 (SAM's adaptive rule allows η = 0)."""
    if adaptive is True and as_real(name, eta) <= 0:
        rule = (
            "> 0 with adaptive=True (XSAM maps the direction back through 1/(|θ|+η), which "
            "is 0/0 where θ = 0 and η = 0)"
        )
        raise ArgumentError(name, rule, eta, bound="> 0 for XSAM with adaptive=True")
