"""Paired statistics of a comparison: t quantiles, paired differences, verdicts, --pairs."""

from __future__ import annotations

import json
import math

import pytest

from xsam.train import ConfigError, TrainConfig
from xsam.train import compare as cmp
from xsam.train.stats import (
    format_points,
    normal_quantile,
    paired_difference,
    t_cdf,
    t_quantile,
    verdict,
    verdict_line,
)

M = "\u2212"  # the minus sign of the printed lines


# ---------------------------------------------------------------------- t distribution
@pytest.mark.parametrize(
    "p, df, expected",
    [
        # printed t tables (6 decimals): two-sided 95% and a few other levels
        (0.975, 1, 12.706205),
        (0.975, 2, 4.302653),
        (0.975, 3, 3.182446),
        (0.975, 4, 2.776445),
        (0.975, 5, 2.570582),
        (0.975, 10, 2.228139),
        (0.975, 29, 2.045230),
        (0.975, 30, 2.042272),
        (0.975, 60, 2.000298),
        (0.995, 4, 4.604095),
        (0.95, 10, 1.812461),
        (0.9, 1, 3.077684),
        (0.975, math.inf, 1.959964),
    ],
)
def test_t_quantile_known_values(p, df, expected):
    q = t_quantile(p, df)
    assert q == pytest.approx(expected, abs=6e-7)
    assert t_quantile(1 - p, df) == -q
    assert t_cdf(q, df) == pytest.approx(p, abs=1e-14)


def test_t_distribution_closed_forms_and_limits():
    # df = 1 is Cauchy, df = 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-15)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-15)
    assert t_quantile(0.5, 7) == 0.0
    assert normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    # quantiles fall with df towards the normal one
    qs = [t_quantile(0.975, df) for df in range(1, 61)]
    assert all(a > b for a, b in zip(qs, qs[1:])) and qs[-1] > normal_quantile(0.975)
    assert t_quantile(0.975, 100_000) == pytest.approx(normal_quantile(0.975), abs=1e-4)
    for bad in ((0.0, 3), (1.0, 3), (0.9, 0), (0.9, 2.5)):
        with pytest.raises(ValueError):
            t_quantile(*bad)


# ---------------------------------------------------------------------- paired differences
def test_paired_difference_by_hand():
    a = [80.0, 82.0, 81.0, 79.0, 83.0]
    b = [81.0, 82.5, 82.0, 79.0, 84.5]
    # d = 1, 0.5, 1, 0, 1.5: mean 0.8, sum of squares about it 0.04+0.09+0.04+0.64+0.49 = 1.3
    sd = math.sqrt(1.3 / 4)
    half = 2.7764451051977934 * sd / math.sqrt(5)
    d = paired_difference(a, b)
    assert d["n"] == 5 and d["df"] == 4
    assert d["mean"] == pytest.approx(0.8, abs=1e-12)
    assert d["sd"] == pytest.approx(sd, abs=1e-12)
    assert d["se"] == pytest.approx(sd / math.sqrt(5), abs=1e-12)
    assert (d["lo"], d["hi"]) == (pytest.approx(0.8 - half), pytest.approx(0.8 + half))
    assert d["lo"] == pytest.approx(0.0921, abs=1e-4)  # excludes 0: b better
    # pairing matters: the same values unpaired would give a much wider interval
    assert paired_difference(a, list(reversed(b)))["lo"] < 0
    # b − a, not a − b
    assert paired_difference(b, a)["mean"] == pytest.approx(-0.8)


def test_paired_difference_small_n():
    one = paired_difference([70.0], [71.5])
    assert one["n"] == 1 and one["mean"] == pytest.approx(1.5)
    assert one["lo"] is None and one["hi"] is None and one["sd"] is None
    none = paired_difference([], [])
    assert none["n"] == 0 and none["mean"] is None and none["lo"] is None
    two = paired_difference([1.0, 2.0], [2.0, 4.0])  # d = 1, 2: sd = 1/sqrt(2), se = 1/2
    assert (two["lo"], two["hi"]) == (
        pytest.approx(1.5 - 12.706204736174703 / 2),
        pytest.approx(1.5 + 12.706204736174703 / 2),
    )
    with pytest.raises(ValueError, match="as many"):
        paired_difference([1.0], [1.0, 2.0])


def test_verdict_wording():
    pos = {"n": 5, "mean": 0.6, "lo": 0.1, "hi": 1.1}
    neg = {"n": 5, "mean": -0.6, "lo": -1.1, "hi": -0.1}
    both = {"n": 5, "mean": 0.4, "lo": -0.1, "hi": 0.9}
    assert verdict(pos, "sam", "xsam") == "xsam better"
    assert verdict(neg, "sam", "xsam") == "sam better"
    assert verdict(both, "sam", "xsam") == "not distinguishable"
    assert verdict({"n": 5, "mean": 0.0, "lo": 0.0, "hi": 0.0}, "a", "b") == "not distinguishable"
    assert (
        verdict_line(both, "sam", "xsam")
        == f"xsam {M} sam: +0.40 [{M}0.10, +0.90] points over 5 seeds: not distinguishable"
    )
    assert verdict_line(pos, "sam", "xsam").endswith(": xsam better")
    assert verdict_line(neg, "sam", "xsam") == (
        f"xsam {M} sam: {M}0.60 [{M}1.10, {M}0.10] points over 5 seeds: sam better"
    )
    one = paired_difference([70.0], [70.4])
    assert verdict_line(one, "sam", "xsam") == (
        f"xsam {M} sam: +0.40 points over 1 seed: one seed: no interval"
    )
    assert verdict_line(paired_difference([], []), "sam", "xsam") == (
        f"xsam {M} sam: no seed completed by both"
    )
    assert format_points(-0.001) == "+0.00" and format_points(-0.5) == f"{M}0.50"


# ---------------------------------------------------------------------- --pairs
LABELS = ["sgd", "sam:rho=0.05", "xsam", "xsam:steps=2,alpha_every=10", "sgd:lr=1e-3"]


def test_parse_pairs():
    assert cmp.parse_pairs(None, ["sgd", "sam", "xsam"]) == [
        ("sgd", "sam"),
        ("sgd", "xsam"),
        ("sam", "xsam"),
    ]
    assert cmp.parse_pairs("xsam-sam:rho=0.05, sam:rho=0.05-sgd", LABELS) == [
        ("sam:rho=0.05", "xsam"),
        ("sgd", "sam:rho=0.05"),
    ]
    # labels holding ',' and '-' are read whole; case, spaces and '−' do not matter
    assert cmp.parse_pairs("XSAM:steps=2,alpha_every=10 − xsam,sgd:lr=1e-3-sgd", LABELS) == [
        ("xsam", "xsam:steps=2,alpha_every=10"),
        ("sgd", "sgd:lr=1e-3"),
    ]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("xsam-adam", "unknown label 'adam' in --pairs"),
        ("adam-xsam", "unknown label 'adam' in --pairs"),
        ("xsam-sgd,sam-sgd", "unknown label 'sam' in --pairs"),
        ("xsam", "should be B-A"),
        ("xsam-xsam", "compares a variant with itself"),
        ("xsam-sgd,xsam-sgd", "listed twice"),
        (",", "names no pair"),
    ],
)
def test_parse_pairs_errors(text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")) as info:
        cmp.parse_pairs(text, LABELS)
    assert "\n" not in str(info.value)
    if "unknown" in fragment:
        assert "the labels are: sgd, sam:rho=0.05, xsam" in str(info.value)


# ---------------------------------------------------------------------- in the results
def _fake_run(root, name, cfg, test_accs, val_accs=None):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(TrainConfig(epochs=len(test_accs), **cfg).to_json())
    rows = [
        {
            "epoch": i + 1,
            "test_acc": a,
            "val_acc": val_accs[i] if val_accs else None,
            "wall_s": 1.0,
            "alpha": None,
        }
        for i, a in enumerate(test_accs)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_pairs_in_results(tmp_path):
    # final accuracies (%): sgd 80, 82, 81; xsam 81, 82.5, 82 -> d = 1, 0.5, 1
    # best: sgd 85, 82, 81; xsam 81, 82.5, 82 -> d = -4, 0.5, 1
    finals = {"sgd": [(0.85, 0.80), (0.82, 0.82), (0.81, 0.81)]}
    finals["xsam"] = [(0.80, 0.81), (0.80, 0.825), (0.80, 0.82)]
    entries = []
    for label, per_seed in finals.items():
        for seed, accs in enumerate(per_seed):
            name = f"{label}-seed{seed}"
            _fake_run(tmp_path, name, {"optimizer": label, "seed": seed}, list(accs))
            entries.append({"label": label, "seed": seed, "dir": name})
    entries.append({"label": "sam", "seed": 0, "dir": "sam-seed0"})  # never ran
    (tmp_path / "compare.json").write_text(json.dumps({"runs": entries}))
    runs = cmp.load_runs(tmp_path)
    pairs = cmp.compare_pairs(runs, [("sgd", "xsam"), ("sam", "xsam")])
    p, empty = pairs
    assert (p["label_a"], p["label_b"], p["n"], p["seeds"]) == ("sgd", "xsam", 3, [0, 1, 2])
    by_hand = paired_difference([80.0, 82.0, 81.0], [81.0, 82.5, 82.0])
    assert p["final"]["mean"] == pytest.approx(by_hand["mean"])
    assert p["final"]["lo"] == pytest.approx(by_hand["lo"])
    assert p["final"]["hi"] == pytest.approx(by_hand["hi"])
    assert p["final"]["verdict"] == "xsam better"  # d = 1, .5, 1: [+0.12, +1.55]
    assert p["best"]["mean"] == pytest.approx(-2.5 / 3)
    assert p["best"]["verdict"] == "not distinguishable"
    assert empty["n"] == 0 and empty["final"]["verdict"] == "no common seed"
    table = cmp.format_pairs(pairs).splitlines()
    assert table[0].startswith(f"| B {M} A | seeds | final test acc (points) | verdict |")
    assert table[2].startswith(f"| xsam {M} sgd | 3 | +0.83 [+0.12, +1.55] | xsam better |")
    assert table[3] == f"| xsam {M} sam | 0 | – | no common seed | – | no common seed |"
    json.dumps(pairs)  # plain JSON (no NaN)


def test_default_pairs_every_pair_up_to_four_then_each_against_the_first():
    from xsam.train.compare import default_pairs

    four = ["sgd", "sam", "xsam", "asam"]
    assert len(default_pairs(four)) == 6 and ("sam", "xsam") in default_pairs(four)
    sweep = ["sam:rho=0.05", "sam:rho=0.1", "sam:rho=0.2", "sam:rho=0.4", "sam:rho=0.8"]
    assert default_pairs(sweep) == [(sweep[0], b) for b in sweep[1:]]
