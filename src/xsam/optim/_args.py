"""Checking what users hand the SAM-family optimizers: numbers, param groups and the split of
keyword arguments between the wrapper and the base optimizer.

The rules for single values (numbers, integers, ``eta`` with adaptive XSAM) are
:mod:`xsam.checks`, shared with the schedule, the analysis tools and ``TrainConfig``; every check
raises before anything is changed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..checks import adaptive_eta, integer, real
from ..distributed import local_tensor

# Hyperparameters the wrapper stores in every param group (so they are per-group, saved by
# state_dict and reachable by schedulers).
GROUP_KEYS = ("rho", "rho_max", "adaptive", "eta")

# Every keyword a SAM-family constructor owns. A base optimizer setting with one of these names
# must come through ``base_kwargs=`` so that no keyword can reach the wrong optimizer.
FAMILY_KEYWORDS = frozenset(
    {
        "rho",
        "steps",
        "alpha",
        "rho_max",
        "alpha_grid",
        "alpha_every",
        "adaptive",
        "eta",
        "model",
        "perturbation",
        "schedule",
        "base_kwargs",
    }
)
XSAM_ONLY = frozenset({"alpha", "rho_max", "alpha_grid", "alpha_every"})

# The constructor arguments SAM and XSAM both take and hand to SAMFamily as they are.
FAMILY_ARGS = (
    "rho",
    "steps",
    "adaptive",
    "eta",
    "model",
    "perturbation",
    "schedule",
    "base_kwargs",
)


def family_args(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The shared constructor arguments (``FAMILY_ARGS``) out of a constructor's
    ``locals()``, for ``SAMFamily.__init__``."""
    return {name: arguments[name] for name in FAMILY_ARGS}


def check_group(group: dict[str, Any], where: str, *, positive_eta: bool) -> None:
    """Validate (and normalise to floats) the wrapper's keys of one param group, in place.

    ``where`` names the group in messages (e.g. ``"param_groups[1]"``); ``positive_eta``: the
    variant divides by ``|θ| + η`` (XSAM with ``adaptive=True``)."""
    group["rho"] = real(f"{where}['rho']", group["rho"], low=0.0)
    group["eta"] = real(f"{where}['eta']", group["eta"], low=0.0)
    if not isinstance(group["adaptive"], bool):
        raise TypeError(f"{where}['adaptive'] must be a bool, got {group['adaptive']!r}")
    if group["rho_max"] is not None:
        group["rho_max"] = real(f"{where}['rho_max']", group["rho_max"], low=0.0, strict=True)
    if positive_eta:
        adaptive_eta(f"{where}['eta']", group["eta"], group["adaptive"])


def check_family_args(base_optimizer: Any, *, steps: Any, adaptive: Any, model: Any) -> None:
    """The SAM-family constructor's arguments that are not numbers: the base optimizer class,
    ``steps``, ``adaptive`` and ``model``."""
    if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
        hint = ""
        if isinstance(base_optimizer, Optimizer):
            hint = " (pass the class, e.g. torch.optim.SGD, and its kwargs, not an instance)"
        raise TypeError(
            f"base_optimizer must be a torch.optim.Optimizer subclass, got {base_optimizer!r}"
            + hint
        )
    integer("steps", steps, low=1)
    if not isinstance(adaptive, bool):
        raise TypeError(f"adaptive must be a bool, got {adaptive!r}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")


def check_family_numbers(*, rho: Any, eta: Any, rho_max: Any) -> tuple[float, float, float | None]:
    """``rho >= 0``, ``eta >= 0`` and ``rho_max > 0`` (or ``None``), as floats."""
    rho, eta = real("rho", rho, low=0.0), real("eta", eta, low=0.0)
    if rho_max is not None:
        rho_max = real("rho_max", rho_max, low=0.0, strict=True)
    return rho, eta, rho_max


def check_update_params(
    owner: str,
    owners: list[Tensor],
    where: Mapping[int, tuple[Any, int, int]],
    names: Callable[[], Mapping[int, str]],
) -> list[Tensor]:
    """The local data of the parameters one update covers, refusing sparse gradients, meta
    parameters and parameters on several devices (``where``: id -> (group, its index, the
    parameter's index in it); ``names``: id -> name, called only to word an error)."""
    for p in owners:
        if p.grad is not None and p.grad.is_sparse:
            raise ValueError("sparse gradients are not supported")
        if p.is_meta:
            _, gi, pi = where[id(p)]
            raise RuntimeError(
                f"{describe_param(p, names(), gi, pi)} is on the meta device "
                "and has no values; materialise the model (e.g. module.to_empty(device=...) "
                "and reset its parameters) before stepping"
            )
    params = [local_tensor(p.detach()) for p in owners]
    if params and len({p.device for p in params}) > 1:
        raise RuntimeError(
            f"{owner}: parameters with gradients span several devices "
            f"({sorted({str(p.device) for p in params})}); one device per optimizer is "
            "supported (use one optimizer per device or DDP/FSDP)"
        )
    return params


def describe_param(p: Any, names: Mapping[int, str], group: int, index: int) -> str:
    name = names.get(id(p))
    where = f"param_groups[{group}]['params'][{index}]"
    label = f"parameter {name!r} ({where})" if name else f"parameter {where}"
    if isinstance(p, Tensor):
        label += f" of shape {tuple(p.shape)} and dtype {p.dtype}"
    return label


def check_params(groups: list[dict[str, Any]], names: Mapping[int, str]) -> None:
    """Refuse parameters the update cannot handle, naming the first one found."""
    for gi, group in enumerate(groups):
        for pi, p in enumerate(group["params"]):
            if not isinstance(p, Tensor):
                continue
            if p.is_complex() or p.is_sparse:
                kind = "complex" if p.is_complex() else "sparse"
                raise ValueError(
                    f"{describe_param(p, names, gi, pi)} is {kind}; complex and sparse "
                    "parameters are not supported"
                )


def _accepted_keywords(cls: type[Optimizer]) -> tuple[set[str], bool]:
    """The keyword names ``cls.__init__`` accepts, and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # pragma: no cover - C extensions without a signature
        return set(), True
    names, var_kw = set(), False
    for i, (name, prm) in enumerate(sig.parameters.items()):
        if prm.kind is prm.VAR_KEYWORD:
            var_kw = True
        elif prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY) and i >= 2:
            names.add(name)  # skip self and params
    return names, var_kw


def check_base_class(owner: str, base_cls: type[Optimizer]) -> None:
    """Refuse a base optimizer whose ``step()`` a SAM-family update cannot call: one that
    needs a closure (``LBFGS``: it re-evaluates the loss itself, in a line search) or one that
    steps sparse gradients only (``SparseAdam``; the direction ``d`` is dense)."""
    base = base_cls.__name__
    if issubclass(base_cls, torch.optim.SparseAdam):
        raise ValueError(
            f"{owner} cannot wrap {base}: it steps sparse gradients only and the SAM-family "
            "direction d is dense; use torch.optim.Adam"
        )
    try:
        step = inspect.signature(base_cls.step).parameters.get("closure")
    except (TypeError, ValueError):  # pragma: no cover - C extensions without a signature
        step = None
    if step is not None and step.default is inspect.Parameter.empty:
        raise ValueError(
            f"{owner} cannot wrap {base}: its step() needs a closure (it evaluates the loss "
            "itself), and the SAM-family update steps the base optimizer once with d, "
            "without one"
        )


def split_base_kwargs(
    owner: str,
    base_cls: type[Optimizer],
    loose: dict[str, Any],
    base_kwargs: Mapping[str, Any] | None,
    explicit: frozenset[str],
    own: frozenset[str],
) -> dict[str, Any]:
    """The keyword arguments for ``base_cls``, refusing every ambiguity.

    ``loose``: keywords the wrapper's signature did not take (they go to the base optimizer);
    ``base_kwargs``: the explicit mapping, if given; ``explicit``: every keyword the caller
    wrote; ``own``: the keywords this wrapper's signature takes. A base optimizer the update
    cannot drive is refused first (:func:`check_base_class`)."""
    check_base_class(owner, base_cls)
    accepted, var_kw = _accepted_keywords(base_cls)
    base = base_cls.__name__
    for name in sorted(loose):
        if name in FAMILY_KEYWORDS:
            what = "an XSAM setting" if name in XSAM_ONLY else "a SAM-family setting"
            hint = (
                f"; to set {base}'s own {name!r}, pass base_kwargs={{{name!r}: ...}}"
                if name in accepted or var_kw
                else ""
            )
            raise ValueError(
                f"{owner} got {name}={loose[name]!r}, which is {what} that {owner} does not "
                f"take{hint}"
            )
    if base_kwargs is None:
        clash = sorted((explicit & own) & accepted - {"params"})
        if clash:
            name = clash[0]
            raise ValueError(
                f"{name!r} is both a {owner} setting and a {base} setting, so {name}=... is "
                f"ambiguous; pass {base}'s settings as base_kwargs={{...}} (top-level keywords "
                f"then belong to {owner} only)"
            )
        return dict(loose)
    if not isinstance(base_kwargs, Mapping):
        raise TypeError(f"base_kwargs must be a mapping, got {type(base_kwargs).__name__}")
    both = sorted(set(base_kwargs) & set(loose))
    if both:
        raise ValueError(f"{both} given both as keywords and in base_kwargs; give each once")
    return {**loose, **base_kwargs}
