"""Section 1: whole-update time (forward and backward passes included), SAM against XSAM.

Every variant of ``UPDATE_VARIANTS`` trains its own copy of the model on one fixed batch.
``ascent_step`` and ``descent_direction`` are also timed inside each update (``instrument``),
which gives the decomposed, low-noise estimate of XSAM's extra cost."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import xsam
from xsam.models import build_model

from .config import (
    BASE_KW,
    FIXED_ALPHA,
    RHO,
    TARGET_EPOCH_RATIO,
    TARGET_UPDATE_RATIO,
    UPDATE_VARIANTS,
)
from .measure import Schedule, bootstrap_ci, interleaved_rounds, iqr, median, ratios, sync, timed

Update = tuple[Any, Callable[[], Any]]  # (optimizer, one whole update)


def make_closure(model: torch.nn.Module, x: Tensor, y: Tensor) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        loss = F.cross_entropy(model(x), y)
        if torch.is_grad_enabled():  # lets α probes run forward-only
            loss.backward()
        return loss

    return closure


def make_sam_family(kind: str, model: torch.nn.Module) -> xsam.SAMFamily:
    params = model.parameters()
    if kind in ("sam", "sam_b"):
        return xsam.SAM(params, torch.optim.SGD, rho=RHO, steps=1, model=model, **BASE_KW)
    if kind == "xsam_fixed":
        return xsam.XSAM(
            params, torch.optim.SGD, rho=RHO, steps=1, alpha=FIXED_ALPHA, model=model, **BASE_KW
        )
    if kind == "xsam_auto":  # searches at its first (warm-up) update only
        return xsam.XSAM(
            params, torch.optim.SGD, rho=RHO, alpha="auto", alpha_every=None, model=model, **BASE_KW
        )
    if kind == "xsam_search":  # searches at every update
        return xsam.XSAM(
            params, torch.optim.SGD, rho=RHO, alpha="auto", alpha_every=1, model=model, **BASE_KW
        )
    raise ValueError(kind)


def make_update(kind: str, model: torch.nn.Module, x: Tensor, y: Tensor) -> Update:
    """The optimizer of variant ``kind`` and a function that runs one update on (x, y)."""
    closure = make_closure(model, x, y)
    if kind == "sgd":
        opt: Any = torch.optim.SGD(model.parameters(), **BASE_KW)

        def update() -> None:
            opt.zero_grad(set_to_none=True)
            closure()
            opt.step()

        return opt, update
    opt = make_sam_family(kind, model)
    return opt, lambda: opt.step(closure)


def instrument(opt: Any, device: torch.device) -> list[float]:
    """Time the optimizer's own calls inside ``opt.step(closure)``: ``ascent_step`` and
    ``descent_direction`` are wrapped on the instance (the library is not modified); the
    returned list collects their seconds, to be read and cleared after each update. With the
    forward/backward passes identical between SAM and XSAM, this isolates XSAM's extra work
    from the noise of the passes."""
    acc: list[float] = []
    names = ("ascent_step", "descent_direction") if isinstance(opt, xsam.SAMFamily) else ("step",)
    for name in names:
        method = getattr(opt, name)

        def wrapped(*a: Any, _m: Any = method, **k: Any) -> Any:
            sync(device)
            t0 = time.perf_counter()
            out = _m(*a, **k)
            sync(device)
            acc.append(time.perf_counter() - t0)
            return out

        setattr(opt, name, wrapped)
    return acc


@dataclass
class UpdateTimes:
    """Timed rounds of the whole-update section."""

    times: dict[str, list[float]]  # seconds per update, per variant
    inner: dict[str, list[float]]  # optimizer seconds inside each update (not SGD)
    search_cost: list[float] = field(default_factory=list)  # search minus auto, same round


def build_runs(
    name: str, in_ch: int, size: int, batch: int, device: torch.device, seed: int
) -> tuple[dict[str, Update], torch.nn.Module]:
    """Every variant on its own model, all from the same initial weights and one batch; and
    the last model built (for the parameter counts)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_ch, size, size, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    runs = {}
    for kind in UPDATE_VARIANTS:
        torch.manual_seed(seed)  # same initial weights for every variant
        model = build_model(name, 10, in_ch).to(device).train()
        runs[kind] = make_update(kind, model, x, y)
    return runs, model


def time_rounds(
    runs: dict[str, Update],
    schedule: Schedule,
    search_every: int,
    device: torch.device,
    seed: int,
    label: str,
) -> UpdateTimes:
    """Interleaved rounds: each runs every variant once, in a fresh random order; the search
    update only in every ``search_every``-th timed round."""
    probes = {k: instrument(o, device) for k, (o, _) in runs.items()}
    rec = UpdateTimes({k: [] for k in runs}, {k: [] for k in probes})
    rng = random.Random(seed)
    for r in interleaved_rounds(schedule, label):
        warm = r < schedule.warmup
        order = list(runs)
        if not warm and (r - schedule.warmup) % search_every:
            order.remove("xsam_search")
        rng.shuffle(order)
        this = {}
        for kind in order:
            this[kind] = timed(runs[kind][1], device)
            if kind in probes:
                if not warm:
                    rec.inner[kind].append(sum(probes[kind]))
                probes[kind].clear()
        if not warm:
            for kind, dt in this.items():
                rec.times[kind].append(dt)
            if "xsam_search" in this:
                rec.search_cost.append(this["xsam_search"] - this["xsam_auto"])
    return rec


def check_runs(name: str, runs: dict[str, Update]) -> None:
    """Nothing skipped, and searches where intended."""
    for kind, (opt, _) in runs.items():
        if isinstance(opt, xsam.SAMFamily) and opt.skipped_updates:
            raise RuntimeError(f"{name}/{kind}: {opt.skipped_updates} updates skipped")
    assert runs["xsam_auto"][0].search_due is False
    assert runs["xsam_search"][0].search_due is True


def time_stats(rec: UpdateTimes) -> dict[str, Any]:
    """Per-variant statistics of the update times and of the optimizer time inside them."""
    times, inner = rec.times, rec.inner
    return {
        "times_s": times,
        "median_s": {k: median(v) for k, v in times.items()},
        "min_s": {k: min(v) for k, v in times.items()},
        "iqr_s": {k: iqr(v) for k, v in times.items()},
        "optimizer_time_in_update_s": {k: median(v) for k, v in inner.items()},
        "optimizer_times_in_update_s": inner,
    }


def ratio_stats(rec: UpdateTimes, alpha_every: int, seed: int) -> dict[str, Any]:
    """XSAM/SAM and control ratios (medians of per-round ratios), the search cost and the
    epoch ratio."""
    times = rec.times
    sam, sam_b, fixed, auto = (times[k] for k in ("sam", "sam_b", "xsam_fixed", "xsam_auto"))
    r_control = ratios(sam_b, sam)
    r_fixed = ratios(fixed, sam)
    r_auto = ratios(auto, sam)
    cost = median(rec.search_cost)
    # an epoch of N updates: N−1 auto updates and one search update, against N SAM updates
    r_epoch = [(a + cost / alpha_every) / b for a, b in zip(auto, sam)]
    return {
        "ratio_control_sam_b_over_sam": median(r_control),
        "ratio_control_ci95": bootstrap_ci(r_control, seed),
        "ratio_fixed_over_sam": median(r_fixed),
        "ratio_fixed_over_sam_ci95": bootstrap_ci(r_fixed, seed),
        "ratio_auto_over_sam": median(r_auto),
        "ratio_auto_over_sam_ci95": bootstrap_ci(r_auto, seed),
        "search_cost_s": cost,
        "search_cost_per_round_s": rec.search_cost,
        "search_cost_ci95": bootstrap_ci(rec.search_cost, seed),
        "search_cost_in_sam_updates": cost / median(sam),
        "amortised_search_s_per_update": cost / alpha_every,
        "amortised_search_over_sam": cost / alpha_every / median(sam),
        "ratio_fixed_over_sam_fastest": min(fixed) / min(sam),
        "ratio_auto_over_sam_fastest": min(auto) / min(sam),
        # how much slower the median round ran than the fastest (1.0 = a quiet machine)
        "contention_factor_sgd": median(times["sgd"]) / min(times["sgd"]),
        "ratio_epoch": median(r_epoch),
        "ratio_epoch_ci95": bootstrap_ci(r_epoch, seed),
    }


def decomposed_stats(rec: UpdateTimes, alpha_every: int) -> dict[str, Any]:
    """The passes are the same work in SAM and XSAM; the difference is the optimizer's own
    time (ascent_step + descent_direction), measured inside each update."""
    inner = rec.inner
    extra_fixed = median([a - b for a, b in zip(inner["xsam_fixed"], inner["sam"])])
    extra_auto = median([a - b for a, b in zip(inner["xsam_auto"], inner["sam"])])
    t_sam = median(rec.times["sam"])
    cost = median(rec.search_cost)
    return {
        "xsam_fixed_extra_s": extra_fixed,
        "xsam_auto_extra_s": extra_auto,
        "ratio_fixed_over_sam": 1 + extra_fixed / t_sam,
        "ratio_auto_over_sam": 1 + extra_auto / t_sam,
        "ratio_epoch": 1 + (extra_auto + cost / alpha_every) / t_sam,
    }


def mark_targets(d: dict[str, Any]) -> None:
    """Add ``met_update`` and ``met_epoch`` to a dict with the ratio keys."""
    d["met_update"] = max(d["ratio_fixed_over_sam"], d["ratio_auto_over_sam"]) <= (
        TARGET_UPDATE_RATIO
    )
    d["met_epoch"] = d["ratio_epoch"] <= TARGET_EPOCH_RATIO


def bench_updates(
    name: str,
    in_ch: int,
    size: int,
    batch: int,
    schedule: Schedule,
    alpha_every: int,
    search_every: int,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Whole-update times of every variant on model ``name`` (inputs batch×in_ch×size×size).

    The search update (the slowest by far, and the least noisy relative to its size) runs in
    every ``search_every``-th round only, which buys more rounds for the XSAM/SAM ratios."""
    runs, model = build_runs(name, in_ch, size, batch, device, seed)
    rec = time_rounds(runs, schedule, search_every, device, seed, name)
    check_runs(name, runs)
    res = {
        "model": name,
        "input": [batch, in_ch, size, size],
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_tensors": len(list(model.parameters())),
        "rounds": len(rec.times["sam"]),
        "search_rounds": len(rec.search_cost),
        "warmup_rounds": schedule.warmup,
        "alpha_every": alpha_every,
        "alpha_found": runs["xsam_auto"][0].alpha,
        **time_stats(rec),
        **ratio_stats(rec, alpha_every, seed),
        "decomposed": decomposed_stats(rec, alpha_every),
    }
    mark_targets(res)
    mark_targets(res["decomposed"])
    return res
