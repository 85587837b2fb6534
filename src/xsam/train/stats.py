"""Paired statistics over seeds: Student's t quantiles, paired differences, verdicts.

A comparison is paired: with the same seed every variant starts from the same initialisation
and sees the data in the same order, so the per-seed difference ``B − A`` removes the part of
the seed-to-seed spread the two variants share. :func:`paired_difference` gives the mean of
those differences and a 95% confidence interval from Student's t distribution with ``n − 1``
degrees of freedom; :func:`verdict` turns the interval into words (a variant is *better* only
when the interval excludes 0).

The t quantiles are computed here, exactly (to double precision), without SciPy: for an
integer number of degrees of freedom the t distribution function has a closed form as a
finite sum (Abramowitz & Stegun 26.7.3–26.7.4), which :func:`t_quantile` inverts by
bisection; ``df = inf`` is the normal distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CONFIDENCE",
    "format_points",
    "mean_std",
    "normal_quantile",
    "paired_difference",
    "t_cdf",
    "t_quantile",
    "verdict",
    "verdict_line",
]

CONFIDENCE = 0.95
"""Level of the confidence intervals."""

MINUS = "\u2212"  # the minus sign of the printed numbers and of "B − A"


# ---------------------------------------------------------------------- distributions
def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom: a positive integer
    (closed form) or ``math.inf`` (the normal distribution)."""
    if df == math.inf:
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
    if df < 1 or df != int(df):
        raise ValueError(f"df should be a positive integer or inf but is: {df!r}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    n = int(df)
    theta = math.atan(abs(t) / math.sqrt(n))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    # A = P(|T| < |t|) (Abramowitz & Stegun 26.7.3, 26.7.4)
    if n % 2 == 1:
        term, total = 1.0, 0.0
        if n > 1:
            total = 1.0
            for j in range(3, n, 2):  # 1 + 2/3 c² + (2·4)/(3·5) c⁴ + … up to c^(n−3)
                term *= (j - 1) / j * c2
                total += term
        a = 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    else:
        term, total = 1.0, 1.0
        for j in range(2, n - 1, 2):  # 1 + 1/2 c² + (1·3)/(2·4) c⁴ + … up to c^(n−2)
            term *= (j - 1) / j * c2
            total += term
        a = s * total
    a = min(max(a, 0.0), 1.0)
    return 0.5 + 0.5 * a if t >= 0 else 0.5 - 0.5 * a


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (a positive integer, or
    ``math.inf`` for the normal distribution), e.g. ``t_quantile(0.975, 4) = 2.776445…``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p should be in (0, 1) but is: {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    t_cdf(0.0, df)  # validates df
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):  # bisection down to adjacent doubles
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def normal_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal distribution (the limit ``df → ∞``)."""
    return t_quantile(p, math.inf)


# ---------------------------------------------------------------------- summaries
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n − 1`` in the denominator; 0 for one value)."""
    if not values:
        return math.nan, math.nan
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


# ---------------------------------------------------------------------- paired differences
def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """The paired difference ``b − a`` (``a[i]`` and ``b[i]`` measured with the same seed).

    Returns ``{"n", "mean", "sd", "se", "df", "t", "lo", "hi", "confidence"}``: the mean of
    the differences ``d_i = b_i − a_i``, their sample standard deviation (``n − 1`` in the
    denominator), the standard error ``sd / √n``, and the interval ``mean ± t · se`` with
    ``t = t_quantile((1 + confidence) / 2, n − 1)``. With ``n = 1`` there is no interval
    (``sd``, ``se``, ``t``, ``lo`` and ``hi`` are ``None``); with ``n = 0`` ``mean`` is ``None``
    too.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values should be as many in a as in b: {len(a)} != {len(b)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence should be in (0, 1) but is: {confidence!r}")
    n = len(a)
    out: dict[str, Any] = {
        "n": n,
        "mean": None,
        "sd": None,
        "se": None,
        "df": n - 1 if n > 1 else None,
        "t": None,
        "lo": None,
        "hi": None,
        "confidence": confidence,
    }
    if n == 0:
        return out
    d = [float(y) - float(x) for x, y in zip(a, b)]
    mean = math.fsum(d) / n
    out["mean"] = mean
    if n == 1:
        return out
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in d) / (n - 1))
    se = sd / math.sqrt(n)
    t = t_quantile(0.5 + confidence / 2.0, n - 1)
    out.update(sd=sd, se=se, t=t, lo=mean - t * se, hi=mean + t * se)
    return out


def verdict(diff: dict[str, Any], label_a: str, label_b: str) -> str:
    """In words, what the interval of ``diff`` (``b − a``, from :func:`paired_difference`)
    says: ``"<b> better"`` or ``"<a> better"`` when it excludes 0, ``"not distinguishable"``
    when it holds 0, ``"one seed: no interval"`` or ``"no common seed"`` without one."""
    if diff["n"] == 0:
        return "no common seed"
    if diff["lo"] is None:
        return "one seed: no interval"
    if diff["lo"] > 0:
        return f"{label_b} better"
    if diff["hi"] < 0:
        return f"{label_a} better"
    return "not distinguishable"


def format_points(x: float, digits: int = 2) -> str:
    """``+0.40`` / ``−0.10`` (a true minus sign; zero is ``+0.00``)."""
    text = f"{x:+.{digits}f}"
    if float(text) == 0:
        text = "+" + text[1:]
    return text.replace("-", MINUS)


def verdict_line(diff: dict[str, Any], label_a: str, label_b: str, unit: str = "points") -> str:
    """``"xsam − sam: +0.40 [−0.10, +0.90] points over 5 seeds: not distinguishable"``."""
    head = f"{label_b} {MINUS} {label_a}"
    n = diff["n"]
    if n == 0:
        return f"{head}: no seed completed by both"
    seeds = f"{n} seed" + ("s" if n != 1 else "")
    interval = (
        f" [{format_points(diff['lo'])}, {format_points(diff['hi'])}]"
        if diff["lo"] is not None
        else ""
    )
    return (
        f"{head}: {format_points(diff['mean'])}{interval} {unit} over {seeds}: "
        f"{verdict(diff, label_a, label_b)}"
    )
