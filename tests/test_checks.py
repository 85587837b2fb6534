"""``xsam.checks``, the one validation module, on its own: every rule's accepted values and its
exact message in the one format ``<name> must be <rule>, got <value>``; bools are not numbers;
NaN and infinities are refused; the error keeps the name, the value, the rule, which part of it
failed (``kind``) and the bound, and is a ``ValueError`` or a ``TypeError`` by what failed."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from xsam import checks
from xsam.checks import (
    ArgumentError,
    ArgumentTypeError,
    BadArgument,
    adaptive_eta,
    as_real,
    in_range,
    integer,
    real,
)

ETA_RULE = (
    "> 0 with adaptive=True (XSAM maps the direction back through 1/(|θ|+η), which is 0/0 "
    "where θ = 0 and η = 0)"
)

# (the call, the error class, its exact message)
REFUSED = [
    # as_real: what counts as a real number
    (lambda: as_real("rho", True), ArgumentTypeError, "rho must be a real number, got bool: True"),
    (
        lambda: as_real("rho", False),
        ArgumentTypeError,
        "rho must be a real number, got bool: False",
    ),
    (lambda: as_real("rho", "0.1"), ArgumentTypeError, "rho must be a real number, got str: '0.1'"),
    (lambda: as_real("rho", 1j), ArgumentTypeError, "rho must be a real number, got complex: 1j"),
    (
        lambda: as_real("rho", None),
        ArgumentTypeError,
        "rho must be a real number, got NoneType: None",
    ),
    (
        lambda: as_real("rho", Fraction(1, 2), plain=True),
        ArgumentTypeError,
        "rho must be a real number, got Fraction: Fraction(1, 2)",
    ),
    (
        lambda: as_real("rho", torch.tensor([0.1, 0.2])),
        ArgumentTypeError,
        "rho must be a real number, got a tensor of shape (2,) and dtype torch.float32",
    ),
    (
        lambda: as_real("rho", torch.tensor(1j)),
        ArgumentTypeError,
        "rho must be a real number, got a tensor of shape () and dtype torch.complex64",
    ),
    (
        lambda: as_real("rho", torch.tensor(True)),
        ArgumentTypeError,
        "rho must be a real number, got a tensor of shape () and dtype torch.bool",
    ),
    (
        lambda: as_real("rho", torch.empty((), device="meta")),
        ArgumentTypeError,
        "rho must be a real number, got a meta tensor (it has no value)",
    ),
    # real: finite and above a bound
    (lambda: real("lr", -1, low=0), ArgumentError, "lr must be finite and >= 0, got -1.0"),
    (
        lambda: real("lr", 0, low=0, strict=True),
        ArgumentError,
        "lr must be finite and > 0, got 0.0",
    ),
    (
        lambda: real("lr", 1e-4, low=1e-3),
        ArgumentError,
        "lr must be finite and >= 0.001, got 0.0001",
    ),
    (lambda: real("lr", math.nan, low=0), ArgumentError, "lr must be finite and >= 0, got nan"),
    (lambda: real("lr", math.inf, low=0), ArgumentError, "lr must be finite and >= 0, got inf"),
    (lambda: real("x", -math.inf), ArgumentError, "x must be finite and >= -inf, got -inf"),
    (lambda: real("x", math.nan), ArgumentError, "x must be finite and >= -inf, got nan"),
    (
        lambda: real("lr", True, low=0),
        ArgumentTypeError,
        "lr must be a real number, got bool: True",
    ),
    # in_range: a closed interval
    (lambda: in_range("alpha", 1.5, 0, 1), ArgumentError, "alpha must be in [0, 1], got 1.5"),
    (lambda: in_range("alpha", -0.5, 0, 2), ArgumentError, "alpha must be in [0, 2], got -0.5"),
    (lambda: in_range("alpha", math.nan, 0, 1), ArgumentError, "alpha must be in [0, 1], got nan"),
    (lambda: in_range("alpha", math.inf, 0, 1), ArgumentError, "alpha must be in [0, 1], got inf"),
    (
        lambda: in_range("alpha", True, 0, 1),
        ArgumentTypeError,
        "alpha must be a real number, got bool: True",
    ),
    # integer: an int at least a bound
    (lambda: integer("steps", 0, low=1), ArgumentError, "steps must be an integer >= 1, got 0"),
    (lambda: integer("steps", 1.5, low=1), ArgumentError, "steps must be an integer >= 1, got 1.5"),
    (lambda: integer("steps", 2.0, low=1), ArgumentError, "steps must be an integer >= 1, got 2.0"),
    (
        lambda: integer("steps", True, low=1),
        ArgumentError,
        "steps must be an integer >= 1, got True",
    ),
    (lambda: integer("steps", "2", low=1), ArgumentError, "steps must be an integer >= 1, got '2'"),
    (
        lambda: integer("steps", math.nan, low=1),
        ArgumentError,
        "steps must be an integer >= 1, got nan",
    ),
    (lambda: integer("n", "x", low=None), ArgumentError, "n must be an integer, got 'x'"),
    (lambda: integer("steps", 0, low=1, typed=True), ArgumentError, "steps must be >= 1, got 0"),
    (
        lambda: integer("steps", "1", low=1, typed=True),
        ArgumentTypeError,
        "steps must be an int, got str: '1'",
    ),
    (
        lambda: integer("steps", True, low=1, typed=True),
        ArgumentTypeError,
        "steps must be an int, got bool: True",
    ),
    (
        lambda: integer("steps", 2.5, low=1, integral_floats=True),
        ArgumentError,
        "steps must be an integer >= 1, got 2.5",
    ),
    (
        lambda: integer("every", 0, low=1, or_none=True),
        ArgumentError,
        "every must be an integer >= 1 or None, got 0",
    ),
    # adaptive_eta: XSAM with adaptive=True needs eta > 0
    (lambda: adaptive_eta("eta", 0, True), ArgumentError, f"eta must be {ETA_RULE}, got 0"),
    (lambda: adaptive_eta("eta", -1.0, True), ArgumentError, f"eta must be {ETA_RULE}, got -1.0"),
    (
        lambda: adaptive_eta("eta", "x", True),
        ArgumentTypeError,
        "eta must be a real number, got str: 'x'",
    ),
]


@pytest.mark.parametrize("call, error, message", REFUSED)
def test_every_rule_refuses_with_its_exact_message(call, error, message):
    with pytest.raises(error) as refused:
        call()
    assert str(refused.value) == message
    assert isinstance(refused.value, BadArgument)


def test_accepted_values_come_back_as_python_numbers():
    for value in (0.25, 1, Fraction(1, 4), np.float32(0.25), np.float64(0.25), np.int64(1)):
        got = as_real("rho", value)
        assert type(got) is float and got == float(value)
    for value in (
        torch.tensor(0.25),
        torch.tensor([0.25]),
        torch.tensor(0.25, dtype=torch.float64),
    ):
        assert as_real("rho", value) == 0.25 and type(as_real("rho", value)) is float
    assert as_real("rho", 3, plain=True) == 3.0 and as_real("rho", 0.5, plain=True) == 0.5
    assert real("lr", 0, low=0) == 0.0 and real("lr", 1e-3, low=1e-3) == 1e-3
    assert real("x", -1e300) == -1e300 and real("lr", 2, low=0, strict=True) == 2.0
    assert in_range("alpha", 0, 0, 1) == 0.0 and in_range("alpha", 1, 0, 1) == 1.0
    assert integer("steps", 1, low=1) == 1 and integer("n", -5, low=None) == -5
    two = integer("steps", 2.0, low=1, integral_floats=True)
    assert two == 2 and type(two) is int
    assert integer("every", None, low=1, or_none=True) is None
    assert integer("steps", 3, low=1, typed=True) == 3
    for adaptive in (False, None):
        assert adaptive_eta("eta", 0, adaptive) is None  # only XSAM's adaptive rule needs it
    assert adaptive_eta("eta", 0.01, True) is None


def test_the_error_keeps_name_value_rule_kind_and_bound():
    with pytest.raises(ArgumentError) as refused:
        real("lr", -2, low=0, strict=True)
    e = refused.value
    assert (e.name, e.value, e.rule, e.kind, e.bound) == (
        "lr",
        -2.0,
        "finite and > 0",
        "range",
        "> 0",
    )
    with pytest.raises(ArgumentError) as refused:
        real("lr", math.inf, low=0)
    e = refused.value
    assert (e.name, e.value, e.rule, e.kind, e.bound) == (
        "lr",
        math.inf,
        "finite and >= 0",
        "finite",
        ">= 0",
    )
    with pytest.raises(ArgumentTypeError) as refused:
        as_real("rho", "0.1")
    e = refused.value
    assert (e.name, e.value, e.rule, e.kind, e.bound) == ("rho", "0.1", "a real number", "type", "")
    with pytest.raises(ArgumentError) as refused:
        integer("steps", 1.5, low=1)
    e = refused.value
    assert (e.name, e.value, e.rule, e.kind, e.bound) == (
        "steps",
        1.5,
        "an integer >= 1",
        "type",
        "",
    )
    with pytest.raises(ArgumentError) as refused:
        integer("steps", 0, low=1, typed=True)
    e = refused.value
    assert (e.rule, e.kind, e.bound) == (">= 1", "range", ">= 1")
    with pytest.raises(ArgumentError) as refused:
        in_range("alpha", 2, 0, 1)
    e = refused.value
    assert (e.value, e.rule, e.kind, e.bound) == (2, "in [0, 1]", "range", "in [0, 1]")
    with pytest.raises(ArgumentError) as refused:
        adaptive_eta("eta", 0.0, True)
    e = refused.value
    assert (e.name, e.value, e.rule) == ("eta", 0.0, ETA_RULE)
    assert e.bound == "> 0 for XSAM with adaptive=True"


def test_a_value_error_or_a_type_error_by_what_failed():
    assert issubclass(ArgumentError, ValueError) and not issubclass(ArgumentError, TypeError)
    assert issubclass(ArgumentTypeError, TypeError) and not issubclass(
        ArgumentTypeError, ValueError
    )
    assert issubclass(ArgumentError, BadArgument) and issubclass(ArgumentTypeError, BadArgument)
    e = BadArgument("x", "a rule", [1], kind="range", bound="b")
    assert str(e) == "x must be a rule, got [1]"
    assert str(BadArgument("x", "a rule", [1], shown="a list")) == "x must be a rule, got a list"
    assert sorted(checks.__all__) == [
        "ArgumentError",
        "ArgumentTypeError",
        "BadArgument",
        "adaptive_eta",
        "as_real",
        "in_range",
        "integer",
        "real",
    ]


def test_the_module_imports_no_torch():
    code = "import sys, xsam.checks; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
