"""The former name of :mod:`xsam.norm_stats` (normalisation statistics around an update),
kept so that ``import xsam.policies`` and ``from xsam.policies import ...`` keep working."""

from .norm_stats import NormStatsSnapshot, frozen_norm_stats, norm_modules

__all__ = ["NormStatsSnapshot", "frozen_norm_stats", "norm_modules"]
