"""Hypothesis profiles: ``default`` keeps ``make test`` fast and deterministic;
``pytest --hypothesis-profile=long`` runs thousands of examples per property."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = dict(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new draw
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("default", max_examples=300, **_common)
settings.register_profile("long", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
