"""Experiments with xsam: the training loop, run folders, presets, comparisons and the CLI.

Example:
    >>> from xsam.train import TrainConfig, train
    >>> result = train(TrainConfig(optimizer="xsam", epochs=2, limit_train=512, out=None))
    >>> result["final_test_acc"]  # doctest: +SKIP
"""

from .checkpoint import METRIC_KEYS, TIME_KEYS, load_checkpoint, read_metrics, run_status
from .compare import run_compare
from .config import PRESETS, ConfigError, TrainConfig, resolve_config
from .loop import balanced_subset, build_optimizer, evaluate, lr_factor, train, without_times
from .stats import paired_difference
from .tune import tune_rho

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
