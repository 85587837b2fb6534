"""The values of :class:`~xsam.train.config.TrainConfig` fields: parsing a command-line string
or a JSON value into a field's type, and the checks :meth:`~xsam.train.config.TrainConfig.validated`
applies, each failing with a one-line :class:`ConfigError`.

torch-free (``xsam --help`` reads it); :func:`parse_augment` imports :mod:`xsam.data` when called.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import checks

if TYPE_CHECKING:
    from ..data import Augment

__all__ = [
    "AUGMENT_ALIASES",
    "ConfigError",
    "parse_alpha",
    "parse_alpha_every",
    "parse_alpha_grid",
    "parse_augment",
]

AUGMENT_ALIASES = {"paper": "crop4+flip+cutout16@0.5", "none": ""}


class ConfigError(ValueError):
    """A configuration or a run folder that cannot be used; the message says why (one line)."""


# ---------------------------------------------------------------------- value parsers
def parse_alpha(value: object) -> float | str:
    """``"auto"`` or a finite number (strings like ``"0.5"`` accepted)."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"alpha should be 'auto' or a number but is: {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"alpha should be 'auto' or a finite number but is: {value!r}")
    return float(value)


def parse_alpha_grid(value: object) -> list[float]:
    """A list of numbers, ``"a,b,c"``, or ``"start:stop:step"`` (stop included); sorted,
    without repeats. May be empty (:meth:`TrainConfig.validated` refuses that for XSAM)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            if ":" in text:
                start, stop, step = (float(t) for t in text.split(":"))
                if step <= 0 or stop < start:
                    raise ValueError
                n = int(math.floor((stop - start) / step + 1e-9))
                value = [round(start + i * step, 10) for i in range(n + 1)]
            else:
                value = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(
                f"alpha_grid should be 'start:stop:step' or 'a,b,c' but is: {text!r}"
            ) from None
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"alpha_grid should be a list of numbers but is: {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"alpha_grid should hold finite numbers but holds: {v!r}")
        out.append(float(v))
    return sorted(set(out))


def parse_alpha_every(value: object) -> int | None:
    """An integer, or ``None`` / ``"epoch"`` (search at each epoch start); that it is >= 1
    is checked by :meth:`TrainConfig.validated` (XSAM only: other optimizers ignore it)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("epoch", "none")):
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ConfigError(
                f"alpha_every should be an integer >= 1 or 'epoch' but is: {value!r}"
            ) from None
    return _int("alpha_every", value, low=None)


def parse_augment(spec: object) -> Augment:
    """An :class:`xsam.data.Augment` from ``"none"``, ``"paper"`` or e.g. ``"crop4+flip"``."""
    from ..data import Augment  # imports torch: only when a config is checked

    if not isinstance(spec, str):
        raise ConfigError(f"augment should be a string but is: {spec!r}")
    text = AUGMENT_ALIASES.get(spec.strip().lower(), spec.strip().lower())
    kw: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split("+"))):
        try:
            if part == "flip":
                kw["flip"] = True
            elif part.startswith("crop"):
                kw["crop_padding"] = int(part[4:])
            elif part.startswith("cutout"):
                size, _, p = part[6:].partition("@")
                kw["cutout_size"] = int(size)
                kw["cutout_p"] = float(p) if p else 1.0
            else:
                raise ValueError
            Augment(**kw)
        except (ValueError, TypeError):
            raise ConfigError(
                f"augment {spec!r}: cannot read {part!r}; use 'none', 'paper' or parts like "
                "'crop4+flip+cutout16@0.5'"
            ) from None
    return Augment(**kw) if kw else Augment()


def _optional(parse: Any) -> Any:
    def parse_opt(value: object) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return parse(value)

    return parse_opt


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false but got: {value!r}")


def _typed(kind: type) -> Any:
    def parse(value: object) -> Any:
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                raise ConfigError(f"expected {kind.__name__} but got: {value!r}") from None
        return value  # type-checked by validated()

    return parse


# ---------------------------------------------------------------------- field checks
def _dataset_key(name: object) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key in ("cifar-10", "cifar-100"):
        key = key.replace("-", "")
    return {"tinyimagenet": "tiny-imagenet", "fmnist": "fashion-mnist"}.get(key, key)


def _choice(name: str, value: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ConfigError(f"unknown {name} {value!r}; accepted: {', '.join(accepted)}")
    return value


def _device(name: str, value: object) -> str:
    v = str(value).lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise ConfigError(f"unknown {name} {value!r}; accepted: auto, cpu, cuda, cuda:N")


def _number(
    name: str, value: object, *, low: float, strict: bool = False, ranged: bool = True
) -> float:
    """A finite number; with ``ranged``, also ``> low`` (``strict``) or ``>= low`` (the rule of
    :func:`xsam.checks.real`, for JSON numbers)."""
    bound = low if ranged else -math.inf
    try:
        return checks.real(name, value, low=bound, strict=strict and ranged, plain=True)
    except checks.BadArgument as exc:
        raise _config_error(exc, "a number", repr(value)) from None


def _int(name: str, value: object, *, low: int | None = 1) -> int:
    """An integer (an integral float is accepted), ``>= low`` unless ``low`` is ``None``."""
    try:
        return checks.integer(name, value, low=low, integral_floats=True)
    except checks.BadArgument as exc:
        shown = repr(value) if exc.kind == "type" else str(exc.value)
        raise _config_error(exc, "an integer", shown) from None


def _config_error(exc: checks.BadArgument, what: str, shown: str) -> ConfigError:
    """A rule of :mod:`xsam.checks` broken, in TrainConfig's words: ``<name> should be <rule>
    but is: <value>`` (``what``: the type the field needs)."""
    rule = {"type": what, "finite": "a finite number"}.get(exc.kind, exc.bound)
    return ConfigError(f"{exc.name} should be {rule} but is: {shown}")


# ---------------------------------------------------------------------- parsers from annotations
_TYPE_PARSERS: dict[type, Callable[[object], Any]] = {
    str: str,
    int: _typed(int),
    float: _typed(float),
    bool: _bool,
}


def _type_parser(name: str, hint: Any) -> Callable[[object], Any]:
    """The parser a field's annotation gives: ``str``, ``int``, ``float`` or ``bool``, or one
    of them ``| None`` (then ``None``, ``"none"`` and ``"null"`` also give ``None``)."""
    args = typing.get_args(hint)
    optional = len(args) == 2 and type(None) in args
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if kind not in _TYPE_PARSERS:  # a developer error: such a field declares its parser
        raise TypeError(f"TrainConfig.{name}: no parser for {hint}; declare one with parse=")
    return _optional(_TYPE_PARSERS[kind]) if optional else _TYPE_PARSERS[kind]
