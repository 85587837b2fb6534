"""Label noise: exact flip counts, the two kinds' definitions, determinism, independence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from xsam.data import NOISE_TYPES, noisy_labels


def labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


@given(
    n=st.integers(1, 400),
    k=st.integers(2, 12),
    rate=st.floats(0.0, 1.0),
    kind=st.sampled_from(NOISE_TYPES),
    seed=st.integers(0, 10**6),
)
def test_exactly_round_rate_n_labels_flip_to_a_wrong_class(n, k, rate, kind, seed):
    y = labels(n, k, seed)
    y0 = y.clone()
    out = noisy_labels(y, rate, kind=kind, num_classes=k, seed=seed)
    assert torch.equal(y, y0)  # the input is not modified
    flipped = out != y
    assert int(flipped.sum()) == int(rate * n + 0.5)  # every chosen label changes
    assert bool(((out >= 0) & (out < k)).all())
    if kind == "pair":
        assert torch.equal(out[flipped], (y[flipped] + 1) % k)
    assert torch.equal(out, noisy_labels(y, rate, kind=kind, num_classes=k, seed=seed))


def test_symmetric_noise_spreads_uniformly_over_the_other_classes():
    k, n = 5, 50_000
    y = torch.zeros(n, dtype=torch.long)  # every true label is 0
    out = noisy_labels(y, 0.6, num_classes=k, seed=3)
    counts = torch.bincount(out, minlength=k).double()
    assert counts[0] == n - 30_000
    # each wrong class gets 7,500 in expectation; sd = sqrt(30000 * 1/4 * 3/4) = 75
    assert ((counts[1:] - 7_500).abs() < 5 * 75).all()


def test_noise_depends_only_on_its_own_seed():
    y = labels(1000, 10)
    torch.manual_seed(123)
    a = noisy_labels(y, 0.4, seed=7)
    torch.manual_seed(456)  # the global RNG does not matter
    b = noisy_labels(y, 0.4, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, noisy_labels(y, 0.4, seed=8))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"rate": 1.5}, "rate must be a number in"),
        ({"rate": -0.1}, "rate must be a number in"),
        ({"rate": 0.2, "kind": "asymmetric"}, "kind must be one of"),
        ({"rate": 0.2, "num_classes": 1}, "at least 2 classes"),
    ],
)
def test_bad_arguments_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        noisy_labels(torch.zeros(10, dtype=torch.long), **kw)
    with pytest.raises(ValueError, match="1-D integer"):
        noisy_labels(torch.zeros(10), 0.1)
