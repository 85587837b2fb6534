"""The perturbation-schedule benchmarks price a run from interleaved per-update times:
closed forms for SAM and XSAM schedules, and one real (tiny) measurement round."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cost = _load("schedule_cost")
tradeoff = _load("schedule_tradeoff")

PRICES = {
    "sgd": 1.0, "sam": 2.1, "full": 2.2, "cheap": 1.04, "cheap_reuse": 1.08, "search": 11.3,
}  # fmt: skip
SUMMARY = {k: {"ratio_to_sgd": v} for k, v in PRICES.items()}


def _run(tmp_path, optimizer, reuse, full_updates, searches, epochs=3, examples=1000, batch=125):
    (tmp_path / "run.json").write_text(json.dumps({"train_examples": examples}))
    config = SimpleNamespace(optimizer=optimizer, batch_size=batch, perturb_reuse=reuse)
    metrics = [{"alpha_searches": searches, "full_updates": full_updates}] * epochs
    return {"config": config, "metrics": metrics, "dir": str(tmp_path)}


@pytest.mark.parametrize("reuse", [0.0, 0.5])
def test_a_sam_schedule_is_priced_with_sams_update_and_no_search(tmp_path, reuse):
    run = _run(tmp_path, "sam", reuse, full_updates=6, searches=1)  # 24 updates, 6 full
    cheap = PRICES["cheap_reuse" if reuse else "cheap"]
    expect = 0.25 * PRICES["sam"] + 0.75 * cheap
    assert tradeoff.expected_cost(run, SUMMARY) == pytest.approx(expect, rel=1e-12)
    assert cost.expected_cost(SUMMARY, 0.25, 1.0, bool(reuse), "sam") == pytest.approx(expect)


def test_an_xsam_schedule_pays_its_searches_on_top_of_full_and_cheap_steps(tmp_path):
    run = _run(tmp_path, "xsam", 0.5, full_updates=12, searches=1)  # 24 updates, 3 searches
    expect = 0.5 * 2.2 + 0.5 * 1.08 + (3 / 24) * (11.3 - 2.2)
    assert tradeoff.expected_cost(run, SUMMARY) == pytest.approx(expect, rel=1e-12)
    assert cost.expected_cost(SUMMARY, 0.5, 3 / 24, True) == pytest.approx(expect)


def test_sgd_costs_one_and_a_price_list_without_sam_is_refused(tmp_path):
    assert tradeoff.expected_cost(_run(tmp_path, "sgd", 0.0, 0, 0), SUMMARY) == 1.0
    old = {k: v for k, v in SUMMARY.items() if k != "sam"}
    with pytest.raises(SystemExit, match="no price for a SAM update"):
        tradeoff.expected_cost(_run(tmp_path, "sam", 0.0, 24, 0), old)


def test_one_measured_round_prices_every_variant_against_sgd():
    steps = cost.build_steps("mlp", batch=8, seed=0)
    assert set(steps) == set(cost.VARIANTS)
    summary = cost.summarise(cost.measure(steps, rounds=2, warmup=1, seed=0))
    assert summary["sgd"]["ratio_to_sgd"] == 1.0
    for name in cost.VARIANTS:
        assert summary[name]["median_ms"] > 0 and summary[name]["ratio_to_sgd"] > 0


def test_an_adamw_base_steps_every_variant_with_adamw():
    import torch
    import torch.nn.functional as F

    steps = cost.build_steps("vit", batch=4, seed=0, base="adamw", width=16, depth=1)
    model = steps["sgd"].__defaults__[0]
    twin = cost._model("vit", 0, width=16, depth=1)  # the same initialisation
    base = torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)  # the batch build_steps draws
    x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)
    steps["sgd"]()
    F.cross_entropy(twin(x), y).backward()
    base.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    for name in ("sam", "full", "cheap", "cheap_reuse", "search"):
        opt = steps[name].__defaults__[1]
        assert type(opt.base_optimizer) is torch.optim.AdamW
        assert opt.base_optimizer.defaults["weight_decay"] == 0.05


def test_the_median_interval_takes_the_order_statistics_of_the_sign_test():
    values = list(range(150, 0, -1))  # 1..150 in any order
    # n = 150: ranks floor(75 - 1.96*sqrt(150)/2) = 62 and ceil(1 + 75 + 12.002) = 89
    assert cost.median_interval(values) == [62, 89]
    assert cost.median_interval([3.0]) == [3.0, 3.0]
    assert cost.median_interval([2.0, 1.0]) == [1.0, 2.0]


def test_a_mix_is_priced_round_by_round_when_the_rounds_are_kept():
    full = [2.0, 2.4, 2.2, 3.0, 2.1]
    cheap = [1.0, 1.2, 1.1, 0.9, 1.05]
    summary = {
        "full": {"ratio_to_sgd": 2.2, "ratios": full},
        "search": {"ratio_to_sgd": 11.0, "ratios": [11.0] * 5},
        "cheap": {"ratio_to_sgd": 1.05, "ratios": cheap},
    }
    weights = cost.update_weights(0.25, 0.0, reuse=False)
    assert weights == {"full": 0.25, "search": 0.0, "cheap": 0.75}
    mixes = sorted(0.25 * f + 0.75 * c for f, c in zip(full, cheap))
    got = cost.price(summary, weights)
    assert got["median"] == pytest.approx(mixes[2], rel=1e-12)
    assert [got["lo"], got["hi"]] == pytest.approx([mixes[0], mixes[4]])  # n = 5: ranks 1, 5
    weights = cost.update_weights(0.5, 0.1, reuse=True, method="sam")
    assert weights == {"sam": 0.5, "cheap_reuse": 0.5}


def _row(share, share_lo, share_hi, cost_mid, cost_lo, cost_hi):
    return {
        "share": {"mean": share, "lo": share_lo, "hi": share_hi},
        "cost": {"mean": 9.9, "lo": 9.0, "hi": 11.0},  # run times: unused once priced
        "expected_cost_ci": {"median": cost_mid, "lo": cost_lo, "hi": cost_hi},
    }


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        (_row(0.95, 0.91, 0.99, 1.20, 1.18, 1.25), "goal reached (intervals)"),
        (_row(0.95, 0.85, 1.05, 1.20, 1.18, 1.25), "goal reached on the means, not by the intervals"),
        (_row(0.93, 0.89, 0.97, 1.302, 1.28, 1.33), "not reached on the means; the intervals do not exclude it"),
        (_row(0.95, 0.90, 1.00, 1.47, 1.44, 1.50), "goal not reached"),
        (_row(0.78, 0.70, 0.85, 1.20, 1.18, 1.25), "goal not reached"),
    ],
)  # fmt: skip
def test_the_goal_verdict_reads_means_first_then_intervals(row, expect):
    assert tradeoff.verdict(row) == expect


def test_pooled_measurements_join_their_rounds(tmp_path):
    a = {"sgd": [1.0, 1.0], "sam": [2.0, 2.2]}
    b = {"sgd": [1.0], "sam": [1.9]}
    summaries = [
        {k: {"median_ms": ms, "ratios": r} for k, r in part.items()}
        for part, ms in ((a, 10.0), (b, 12.0))
    ]
    pooled = cost.pool(summaries)
    assert pooled["sam"]["ratios"] == [2.0, 2.2, 1.9]
    assert pooled["sam"]["ratio_to_sgd"] == 2.0 and pooled["sam"]["median_ms"] == 11.0
    assert pooled["sam"]["ratio_ci95"] == cost.median_interval([2.0, 2.2, 1.9])
    paths = []
    for i, summ in enumerate(summaries):
        paths.append(tmp_path / f"m{i}.json")
        paths[-1].write_text(json.dumps({"updates": {**summ, **_other(summ)}}))
    out = tmp_path / "pooled.json"
    assert cost.main(["--pool", *map(str, paths), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["updates"]["sam"]["ratios"] == [2.0, 2.2, 1.9]


def _other(summ):
    """The variants a report needs besides SGD and SAM, priced like SGD."""
    sgd = summ["sgd"]
    return {k: sgd for k in ("full", "cheap", "cheap_reuse", "search")}
