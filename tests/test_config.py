"""``TrainConfig``'s settings and the optimizer they apply to: a setting the chosen optimizer
does not use is accepted (and changes nothing in the run), one it uses is range-checked with a
``ConfigError`` naming it."""

from __future__ import annotations

import math
import re

import pytest
from toy_run import tiny

from xsam.train import ConfigError, TrainConfig, train, without_times
from xsam.train.config import unused_fields


@pytest.mark.parametrize(
    "kw",
    [
        dict(optimizer="sgd", rho_max=0.0),
        dict(optimizer="sgd", rho=-1.0),
        dict(optimizer="sgd", steps=0),
        dict(optimizer="sgd", eta=-1.0),
        dict(optimizer="sgd", alpha_every=0),
        dict(optimizer="sgd", alpha_grid=[]),
        dict(optimizer="sam", rho_max=0.0),
        dict(optimizer="sam", alpha_every=0),
        dict(optimizer="sam", alpha_grid=""),
        dict(base="adamw", momentum=1.0),
        dict(base="adamw", nesterov=True, momentum=0.0),
    ],
)
def test_a_setting_the_optimizer_does_not_use_is_accepted(kw):
    c = TrainConfig(**kw).validated()
    assert set(kw) - {"optimizer", "base"} <= set(unused_fields(c))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(optimizer="xsam", rho_max=0.0), "rho_max should be > 0"),
        (dict(optimizer="sam", rho=-1.0), "rho should be >= 0"),
        (dict(optimizer="sam", steps=0), "steps should be >= 1"),
        (dict(optimizer="sam", eta=-1.0), "eta should be >= 0"),
        (dict(optimizer="xsam", alpha_every=0), "alpha_every should be >= 1"),
        (dict(optimizer="xsam", alpha_grid=[]), "alpha_grid should be a non-empty list"),
        (dict(base="sgd", momentum=1.0), "momentum should be in [0, 1)"),
        (dict(base="sgd", nesterov=True, momentum=0.0), "nesterov needs momentum > 0"),
        # an unused setting still has to be a value of its kind
        (dict(optimizer="sgd", rho="fast"), "rho should be a number"),
        (dict(optimizer="sgd", rho_max=math.inf), "rho_max should be a finite number"),
        (dict(optimizer="sgd", steps=1.5), "steps should be an integer"),
        (dict(optimizer="sgd", perturbation="ring"), "unknown perturbation 'ring'"),
        (dict(optimizer="sgd", adaptive="yes"), "adaptive should be true or false"),
        (dict(optimizer="sam", alpha_grid="0:1:-1"), "alpha_grid should be 'start:stop:step'"),
    ],
)
def test_a_setting_the_optimizer_uses_is_range_checked(kw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**kw).validated()


def test_unused_settings_do_not_change_the_run():
    ignored = dict(rho=-1.0, rho_max=0.0, steps=0, eta=-1.0, alpha_every=0, alpha_grid=[])
    a = train(tiny(optimizer="sgd"))
    b = train(tiny(optimizer="sgd", **ignored))
    assert without_times(a["metrics"]) == without_times(b["metrics"])
    a = train(tiny(optimizer="sam", base="adamw", lr=1e-3))
    b = train(tiny(optimizer="sam", base="adamw", lr=1e-3, rho_max=0.0, alpha_every=0,
                   momentum=1.0, nesterov=True))  # fmt: skip
    assert without_times(a["metrics"]) == without_times(b["metrics"])
