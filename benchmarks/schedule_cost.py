"""What a perturbation schedule costs per update, measured side by side.

Times one training update of: SGD (one forward/backward and the base step), the full SAM
update (two forward/backward passes), the full XSAM update (two passes, α fixed: the search is
priced separately), a cheap step
of a schedule without reuse (one pass and the base step, through the SAM-family wrapper) and a
cheap step with LookSAM's reuse (one pass, plus ``g + λ‖g‖v``). Rounds are interleaved (every
round runs each variant once, in a fresh random order) and the figures are medians of
per-round ratios to SGD, so a noisy shared machine hits both sides of a ratio alike.

From those, the expected cost of a schedule over a run of ``U`` updates with ``F`` full ones is
``(F·t_full + (U − F)·t_cheap + searches·t_search) / (U·t_sgd)``. Usage::

    python benchmarks/schedule_cost.py                    # the label-noise MLP, 1 thread
    python benchmarks/schedule_cost.py --model mlp --rounds 200 --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import xsam
from xsam.models import build_model

VARIANTS = ("sgd", "sam", "full", "cheap", "cheap_reuse", "search")


def _model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_channels=1, image_size=28)


def _closure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    return closure


def build_steps(name: str, batch: int, seed: int) -> dict[str, Callable[[], Any]]:
    """One update per variant, each on its own model and optimizer, on one fixed batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    kw = dict(lr=0.01, momentum=0.9)
    steps: dict[str, Callable[[], Any]] = {}
    m = _model(name, seed)
    sgd = torch.optim.SGD(m.parameters(), **kw)

    def sgd_step(m: torch.nn.Module = m) -> None:
        sgd.zero_grad()
        F.cross_entropy(m(x), y).backward()
        sgd.step()

    steps["sgd"] = sgd_step
    m = _model(name, seed)
    sam = xsam.SAM(m.parameters(), torch.optim.SGD, rho=0.2, model=m, **kw)
    steps["sam"] = lambda m=m, opt=sam: opt.step(_closure(m, x, y))
    for label, schedule, alpha in (
        ("full", None, 0.5),
        ("cheap", xsam.PerturbationSchedule(prob=0.0), 0.5),
        ("cheap_reuse", xsam.PerturbationSchedule(every=10**9, reuse=0.7), 0.5),
        ("search", None, "auto"),
    ):
        m = _model(name, seed)
        opt = xsam.XSAM(
            m.parameters(), torch.optim.SGD, rho=0.1, alpha=alpha, alpha_every=1,
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


def summarise(times: dict[str, list[float]]) -> dict[str, Any]:
    base = times["sgd"]
    out: dict[str, Any] = {}
    for k, ts in times.items():
        ratios = sorted(t / b for t, b in zip(ts, base))
        q = len(ratios) // 4
        out[k] = {
            "median_ms": 1e3 * statistics.median(ts),
            "ratio_to_sgd": statistics.median(ratios),
            "ratio_iqr": [ratios[q], ratios[-q - 1]],
        }
    return out


def expected_cost(summary: dict[str, Any], share_full: float, searches_per_update: float,
                  reuse: bool, method: str = "xsam") -> float:  # fmt: skip
    """Cost of a schedule relative to SGD per update, from the measured ratios."""
    full = summary["sam" if method == "sam" else "full"]["ratio_to_sgd"]
    cheap = summary["cheap_reuse" if reuse else "cheap"]["ratio_to_sgd"]
    if method == "sam":  # SAM has no α to search
        return share_full * full + (1 - share_full) * cheap
    search_extra = summary["search"]["ratio_to_sgd"] - summary["full"]["ratio_to_sgd"]
    return share_full * full + (1 - share_full) * cheap + searches_per_update * search_extra


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates-per-epoch", type=int, default=80, help="for the search's share")
    p.add_argument("--json", default=None)
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    steps = build_steps(ns.model, ns.batch, ns.seed)
    summary = summarise(measure(steps, ns.rounds, ns.warmup, ns.seed))
    per_epoch = 1.0 / ns.updates_per_epoch
    rows = [("SAM, every step full", 1.0, False, "sam")]
    rows += [(f"SAM, every {n} + reuse", 1 / n, True, "sam") for n in (2, 4, 8)]
    rows += [("XSAM, every step full", 1.0, False, "xsam")]
    rows += [(f"XSAM, every {n}", 1 / n, False, "xsam") for n in (2, 4, 8)]
    rows += [(f"XSAM, every {n} + reuse", 1 / n, True, "xsam") for n in (2, 4, 8)]
    print(f"{ns.model}, batch {ns.batch}, {ns.threads} thread(s), {ns.rounds} interleaved rounds")
    print("| update | median ms | ratio to SGD (median, IQR) |\n|---|---:|---:|")
    for k in VARIANTS:
        s = summary[k]
        lo, hi = s["ratio_iqr"]
        print(f"| {k} | {s['median_ms']:.2f} | {s['ratio_to_sgd']:.3f} [{lo:.3f}, {hi:.3f}] |")
    print("\n| schedule | full share | expected cost vs SGD |\n|---|---:|---:|")
    expected = {}
    for name, share, reuse, method in rows:
        expected[name] = expected_cost(summary, share, per_epoch, reuse, method)
        print(f"| {name} | {share:.2f} | {expected[name]:.2f} |")
    if ns.json:
        with open(ns.json, "w") as fh:
            json.dump({"args": vars(ns), "updates": summary, "expected": expected}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
