"""Experiments with xsam: the training loop, run folders, presets, comparisons and the CLI.

Example:
    >>> from xsam.train import TrainConfig, train
    >>> result = train(TrainConfig(optimizer="xsam", epochs=2, limit_train=512, out=None))
    >>> result["final_test_acc"]  # doctest: +SKIP
"""

from .checkpoint import METRIC_KEYS, TIME_KEYS, load_checkpoint, read_metrics, run_status
from .config import PRESETS, ConfigError, TrainConfig, resolve_config
from .loop import balanced_subset, build_optimizer, evaluate, lr_factor, train, without_times

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
    "read_metrics",
    "resolve_config",
    "run_status",
    "train",
    "without_times",
]
