"""The former name of :mod:`xsam.train.process_group` (this process's place under ``torchrun``),
kept so that ``import xsam.train.ranks`` and ``from xsam.train.ranks import ...`` keep working."""

from .process_group import Ranks, close_process_group, init_ranks

__all__ = ["Ranks", "close_process_group", "init_ranks"]
