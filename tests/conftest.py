"""Hypothesis profiles: ``default`` (300 examples per property, derandomized: the same
examples on every run; a few seconds per property on one core) keeps ``make test`` fast and
deterministic; ``long`` (5,000 examples per property; ``pytest --hypothesis-profile=long``
or ``HYPOTHESIS_PROFILE=long``) is what ``make test-slow`` runs the property tests with.

Tests that take more than a few seconds are marked ``slow`` (``make test-slow``); a test moved
there keeps a fast test of the same contract in ``make test``."""

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
