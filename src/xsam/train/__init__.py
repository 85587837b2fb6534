"""Experiments with xsam: the training loop, run folders, presets, comparisons and the CLI.

Example:
    >>> from xsam.train import TrainConfig, train
    >>> result = train(TrainConfig(optimizer="xsam", epochs=2, limit_train=512, out=None))
    >>> result["final_test_acc"]  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that importing the command line
(``xsam --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoint import METRIC_KEYS, TIME_KEYS, load_checkpoint, read_metrics, run_status
    from .compare import run_compare
    from .config import PRESETS, ConfigError, TrainConfig, resolve_config
    from .loop import balanced_subset, build_optimizer, evaluate, lr_factor, train, without_times
    from .stats import paired_difference
    from .tune import tune_rho

_WHERE = {
    "METRIC_KEYS": "checkpoint",
    "TIME_KEYS": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_metrics": "checkpoint",
    "run_status": "checkpoint",
    "run_compare": "compare",
    "PRESETS": "config",
    "ConfigError": "config",
    "TrainConfig": "config",
    "resolve_config": "config",
    "balanced_subset": "loop",
    "build_optimizer": "loop",
    "evaluate": "loop",
    "lr_factor": "loop",
    "train": "loop",
    "without_times": "loop",
    "paired_difference": "stats",
    "tune_rho": "tune",
}

__all__ = [
    "METRIC_KEYS",
    "PRESETS",
    "TIME_KEYS",
    "ConfigError",
    "TrainConfig",
    "balanced_subset",
    "build_optimizer",
    "evaluate",
    "load_checkpoint",
    "lr_factor",
    "paired_difference",
    "read_metrics",
    "resolve_config",
    "run_compare",
    "run_status",
    "train",
    "tune_rho",
    "without_times",
]
assert set(__all__) == set(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
