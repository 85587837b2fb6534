"""What a perturbation schedule costs per update, measured side by side.

Times one training update of: SGD (one forward/backward and the base step), the full SAM
update (two forward/backward passes), the full XSAM update (two passes, α fixed: the search is
priced separately), a cheap step of a schedule without reuse (one pass and the base step,
through the SAM-family wrapper) and a cheap step with LookSAM's reuse (one pass, plus
``g + λ‖g‖v``). Rounds are interleaved (every round runs each variant once, in a fresh random
order) and the figures are medians of per-round ratios to SGD, so a noisy shared machine hits
both sides of a ratio alike.

The expected cost of a schedule whose run has a share ``f`` of full updates and ``s`` α
searches per update is, per round, ``(f − s)·full + s·search + (1 − f)·cheap`` (SAM: ``f·sam +
(1 − f)·cheap``) in that round's ratios; reported is the median over rounds with a
distribution-free 95% interval of the median (order statistics). The JSON keeps the per-round
ratios so that ``schedule_tradeoff.py`` prices each run's own mix the same way. Usage::

    python benchmarks/schedule_cost.py                    # the label-noise MLP, 1 thread
    python benchmarks/schedule_cost.py --model mlp --rounds 200 --threads 1 --json out.json
    python benchmarks/schedule_cost.py --pool a.json b.json c.json --json pooled.json
    python benchmarks/schedule_cost.py --model vit --width 96 --depth 4 --base adamw  # ViT cell

``--base adamw`` (lr 1e-3, weight decay 0.05) makes every variant's base optimizer AdamW;
the row and key ``sgd`` are then the plain AdamW update, the ratios are to it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import xsam
from xsam.models import build_model

VARIANTS = ("sgd", "sam", "full", "cheap", "cheap_reuse", "search")


BASES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, float]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.05}),
}


def _model(name: str, seed: int, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=1, image_size=28, **kwargs)


def _closure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure


def build_steps(
    name: str, batch: int, seed: int, base: str = "sgd", **model_kw: Any
) -> dict[str, Callable[[], Any]]:
    """One update per variant, each on its own model and optimizer, on one fixed batch; the
    base optimizer is :data:`BASES` [``base``], ``model_kw`` goes to the model's builder."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    cls, kw = BASES[base]
    steps: dict[str, Callable[[], Any]] = {}
    m = _model(name, seed, **model_kw)
    sgd = cls(m.parameters(), **kw)

    def sgd_step(m: torch.nn.Module = m) -> None:
        sgd.zero_grad()
        F.cross_entropy(m(x), y).backward()
        sgd.step()

    steps["sgd"] = sgd_step
    m = _model(name, seed, **model_kw)
    sam = xsam.SAM(m.parameters(), cls, rho=0.2, model=m, **kw)
    steps["sam"] = lambda m=m, opt=sam: opt.step(_closure(m, x, y))
    for label, schedule, alpha in (
        ("full", None, 0.5),
        ("cheap", xsam.PerturbationSchedule(prob=0.0), 0.5),
        ("cheap_reuse", xsam.PerturbationSchedule(every=10**9, reuse=0.7), 0.5),
        ("search", None, "auto"),
    ):
        m = _model(name, seed, **model_kw)
        opt = xsam.XSAM(
            m.parameters(), cls, rho=0.1, alpha=alpha, alpha_every=1,
            schedule=schedule, model=m, **kw,
        )  # fmt: skip
        if label == "cheap_reuse":
            opt.step(_closure(m, x, y))  # step 0 is full: it leaves the vector to reuse
        steps[label] = lambda m=m, opt=opt: opt.step(_closure(m, x, y))
    return steps


def measure(steps: dict[str, Callable[[], Any]], rounds: int, warmup: int, seed: int):
    times: dict[str, list[float]] = {k: [] for k in steps}
    rng = random.Random(seed)
    for r in range(warmup + rounds):
        order = list(steps)
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            steps[k]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[k].append(dt)
    return times


def median_interval(values: list[float], z: float = 1.96) -> list[float]:
    """A distribution-free 95% interval of the median: the order statistics of ranks
    ``⌊n/2 − z√n/2⌋`` and ``⌈1 + n/2 + z√n/2⌉`` (1-based, clamped to the sample)."""
    v = sorted(values)
    n = len(v)
    half = z * math.sqrt(n) / 2
    lo = max(1, math.floor(n / 2 - half))
    hi = min(n, math.ceil(1 + n / 2 + half))
    return [v[lo - 1], v[hi - 1]]


def _ratio_stats(median_ms: float, per_round: list[float]) -> dict[str, Any]:
    """One variant's entry: its median time, the median per-round ratio to SGD with IQR and 95%
    interval, and the per-round ratios themselves (in round order, for pricing mixes)."""
    ratios = sorted(per_round)
    q = len(ratios) // 4
    return {
        "median_ms": median_ms,
        "ratio_to_sgd": statistics.median(ratios),
        "ratio_iqr": [ratios[q], ratios[-q - 1]],
        "ratio_ci95": median_interval(per_round),
        "ratios": per_round,
    }


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    """Per variant, :func:`_ratio_stats` of the measured rounds."""
    base = times["sgd"]
    return {
        k: _ratio_stats(1e3 * statistics.median(ts), [t / b for t, b in zip(ts, base)])
        for k, ts in times.items()
    }


def update_weights(share_full: float, searches_per_update: float, reuse: bool,
                   method: str = "xsam") -> dict[str, float]:  # fmt: skip
    """How many of each measured update one update of a schedule is worth, on average."""
    cheap = "cheap_reuse" if reuse else "cheap"
    if method == "sam":  # SAM has no α to search
        return {"sam": share_full, cheap: 1 - share_full}
    s = searches_per_update  # an update that searches replaces a plain full one
    return {"full": share_full - s, "search": s, cheap: 1 - share_full}


def price(summary: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """The cost of a mix of updates relative to SGD. With per-round ratios (this script's
    JSON): the median over rounds of the round's mix, and its 95% interval; otherwise the mix
    of the median ratios, without an interval."""
    if all("ratios" in summary[k] for k in weights):
        rounds = zip(*(summary[k]["ratios"] for k in weights))
        mixes = [sum(w * r for w, r in zip(weights.values(), rs)) for rs in rounds]
        lo, hi = median_interval(mixes)
        return {"median": statistics.median(mixes), "lo": lo, "hi": hi}
    mix = sum(w * summary[k]["ratio_to_sgd"] for k, w in weights.items())
    return {"median": mix, "lo": None, "hi": None}


def expected_cost(summary: dict[str, Any], share_full: float, searches_per_update: float,
                  reuse: bool, method: str = "xsam") -> float:  # fmt: skip
    """Cost of a schedule relative to SGD per update, from the measured ratios."""
    weights = update_weights(share_full, searches_per_update, reuse, method)
    return price(summary, weights)["median"]


def pool(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Several measurements as one: their rounds joined (the per-round ratios of each), the
    median time the median of theirs."""
    return {
        k: _ratio_stats(
            statistics.median(s[k]["median_ms"] for s in summaries),
            [r for s in summaries for r in s[k]["ratios"]],
        )
        for k in summaries[0]
    }


SCHEDULES = (
    [("SAM, every step full", 1.0, False, "sam")]
    + [(f"SAM, every {n} + reuse", 1 / n, True, "sam") for n in (2, 4, 8)]
    + [("XSAM, every step full", 1.0, False, "xsam")]
    + [(f"XSAM, every {n}", 1 / n, False, "xsam") for n in (2, 4, 8)]
    + [(f"XSAM, every {n} + reuse", 1 / n, True, "xsam") for n in (2, 4, 8)]
)


def report(summary: dict[str, Any], per_epoch: float) -> dict[str, Any]:
    """Print the per-update table and the expected cost of common schedules; return those."""
    print("| update | median ms | ratio to SGD (median, IQR) | 95% CI of the median |")
    print("|---|---:|---:|---:|")
    for k in VARIANTS:
        s = summary[k]
        lo, hi = s["ratio_iqr"]
        c_lo, c_hi = s["ratio_ci95"]
        print(
            f"| {k} | {s['median_ms']:.2f} | {s['ratio_to_sgd']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"| [{c_lo:.3f}, {c_hi:.3f}] |"
        )
    print("\n| schedule | full share | expected cost vs SGD [95% CI] |\n|---|---:|---:|")
    expected = {}
    for name, share, reuse, method in SCHEDULES:
        c = price(summary, update_weights(share, per_epoch, reuse, method))
        expected[name] = c
        print(f"| {name} | {share:.2f} | {c['median']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] |")
    return expected


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--width", type=int, default=None, help="the model's width (its default)")
    p.add_argument("--depth", type=int, default=None, help="the model's depth (its default)")
    p.add_argument("--base", choices=sorted(BASES), default="sgd", help="the base optimizer")
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates-per-epoch", type=int, default=80, help="for the search's share")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--pool", nargs="+", metavar="JSON", default=None,
        help="measure nothing: join the rounds of these earlier measurements (this script's JSON)",
    )  # fmt: skip
    ns = p.parse_args(argv)
    if ns.pool:
        summary = pool([json.loads(Path(f).read_text())["updates"] for f in ns.pool])
        print(f"{len(ns.pool)} measurements pooled: {', '.join(ns.pool)}")
    else:
        torch.set_num_threads(ns.threads)
        model_kw = {k: v for k, v in (("width", ns.width), ("depth", ns.depth)) if v is not None}
        steps = build_steps(ns.model, ns.batch, ns.seed, ns.base, **model_kw)
        summary = summarise(measure(steps, ns.rounds, ns.warmup, ns.seed))
        print(f"{ns.model} {model_kw or ''}, {ns.base}, batch {ns.batch}, {ns.threads} "
              f"thread(s), {ns.rounds} rounds")  # fmt: skip
    expected = report(summary, 1.0 / ns.updates_per_epoch)
    if ns.json:
        with open(ns.json, "w") as fh:
            json.dump({"args": vars(ns), "updates": summary, "expected": expected}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
