"""xsam: XSAM (eXplicit Sharpness-Aware Minimization) and the SAM family for PyTorch.

The public names are imported on first use (PEP 562): ``import xsam`` alone does not import
torch, so that ``xsam --help`` and argument errors answer at once. ``from xsam import XSAM``
and ``xsam.XSAM`` work as usual. A new public name goes into ``__all__`` and ``_WHERE`` (the
submodule that defines it) and, for type checkers, into the ``TYPE_CHECKING`` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .norm_stats import frozen_norm_stats
    from .optim import (
        DEFAULT_ALPHA_GRID,
        SAM,
        XSAM,
        PerturbationSchedule,
        SAMFamily,
        clip_direction_norm,
        slerp_coefficients,
    )

__version__ = "0.1.0"

__all__ = [
    "SAM",
    "XSAM",
    "SAMFamily",
    "PerturbationSchedule",
    "DEFAULT_ALPHA_GRID",
    "slerp_coefficients",
    "clip_direction_norm",
    "frozen_norm_stats",
    "__version__",
]

_WHERE = {
    "SAM": "optim",
    "XSAM": "optim",
    "SAMFamily": "optim",
    "PerturbationSchedule": "optim",
    "DEFAULT_ALPHA_GRID": "optim",
    "slerp_coefficients": "optim",
    "clip_direction_norm": "optim",
    "frozen_norm_stats": "norm_stats",
}
"""Where each public name is defined (the submodule of this package)."""


_SUBPACKAGES = ("analysis", "data", "distributed", "integrations", "models", "norm_stats",
                "optim", "policies", "train")  # fmt: skip
"""Reachable as attributes after ``import xsam`` alone (``xsam.optim``), as before."""


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBPACKAGES))


assert set(__all__) == set(_WHERE) | {"__version__"}  # a developer check: a name in both
