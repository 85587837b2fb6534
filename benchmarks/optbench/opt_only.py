"""Section 2: optimizer-only time, xsam.XSAM against the per-tensor loop PlainXSAM.

``.grad`` is filled from fixed random tensors, so no forward or backward pass is timed.
``OptOnly``, ``param_set`` and ``make_grads`` also serve the parity check and the memory
section."""

from __future__ import annotations

import random
from typing import Any

import torch
from plain_xsam import PlainXSAM
from torch import Tensor

import xsam
from xsam.models import build_model

from .config import BASE_KW, FIXED_ALPHA, RHO, TARGET_SPEEDUP
from .measure import Schedule, bootstrap_ci, interleaved_rounds, median, ratios, timed

SEGMENTS = ("ascent", "descent", "base")  # timed parts of one update


def make_optimizer(impl: str, params: list[Tensor], steps: int, alpha: float) -> Any:
    """``impl``: xsam (fixed α), xsam_search (α search at every update), sam, plain, sgd."""
    if impl == "xsam":
        return xsam.XSAM(params, torch.optim.SGD, rho=RHO, steps=steps, alpha=alpha, **BASE_KW)
    if impl == "xsam_search":  # α search at every update, probes = a trivial loss
        return xsam.XSAM(
            params,
            torch.optim.SGD,
            rho=RHO,
            steps=steps,
            alpha="auto",
            alpha_every=1,
            **BASE_KW,
        )
    if impl == "sam":
        return xsam.SAM(params, torch.optim.SGD, rho=RHO, steps=steps, **BASE_KW)
    if impl == "plain":
        return PlainXSAM(params, torch.optim.SGD, rho=RHO, steps=steps, alpha=alpha, **BASE_KW)
    if impl == "sgd":
        return torch.optim.SGD(params, **BASE_KW)
    raise ValueError(impl)


class OptOnly:
    """One optimizer on its own copy of a parameter list, fed fixed gradients.

    ``.grad`` of every parameter is bound to a persistent buffer that is refilled (untimed)
    from the fixed gradient of each pass; the timed segments are the optimizer's calls only."""

    def __init__(
        self, impl: str, base: list[Tensor], grads: list[list[Tensor]], steps: int, alpha: float
    ) -> None:
        self.impl = impl
        self.params = [torch.nn.Parameter(p.clone()) for p in base]
        self.bufs = [torch.empty_like(p) for p in base]
        self.grads = grads  # g₀ … g_k
        self.steps = steps
        self.opt: Any = make_optimizer(impl, self.params, steps, alpha)

    def load(self, i: int) -> None:
        """Bind ``.grad`` to the buffers and fill them with gᵢ."""
        for p, b in zip(self.params, self.bufs):
            p.grad = b
        torch._foreach_copy_(self.bufs, self.grads[i])

    def loss_fn(self) -> Tensor:
        return self.params[0].sum()

    def descent(self) -> None:
        if self.impl == "plain":
            self.opt.descent_direction()
        else:
            ok = self.opt.descent_direction(self.loss_fn if self.impl == "xsam_search" else None)
            if not ok:
                raise RuntimeError("non-finite pass in the optimizer-only benchmark")

    def base_step(self) -> None:
        if self.impl == "sgd":
            self.opt.step()
        else:
            self.opt.base_optimizer.step()

    def iteration(self, device: torch.device, timer: bool = True) -> dict[str, float]:
        """One update; seconds per segment (ascent steps, descent, base step)."""
        t = dict.fromkeys(SEGMENTS, 0.0)
        run = (lambda f: timed(f, device)) if timer else (lambda f: f() or 0.0)
        if self.impl != "sgd":
            for i in range(self.steps):
                self.load(i)
                t["ascent"] += run(self.opt.ascent_step)
            self.load(self.steps)
            t["descent"] = run(self.descent)
        else:
            self.load(self.steps)
        t["base"] = run(self.base_step)
        return t


def make_grads(base: list[Tensor], steps: int, seed: int) -> list[list[Tensor]]:
    """g₀ … g_k: g₀ random, each next one g₀ plus noise (ψ well away from 0 and π/2)."""
    g = torch.Generator().manual_seed(seed)
    g0 = [torch.randn(p.shape, generator=g).to(p.device) for p in base]
    out = [g0]
    for _ in range(steps):
        out.append([a + 0.5 * torch.randn(a.shape, generator=g).to(a.device) for a in g0])
    return out


def param_set(name: str, in_ch: int, device: torch.device, seed: int) -> list[Tensor]:
    """The (detached) parameter list of model ``name``, initialised from ``seed``."""
    torch.manual_seed(seed)
    return [p.detach().to(device) for p in build_model(name, 10, in_ch).parameters()]


def time_rounds(
    runners: dict[str, OptOnly], schedule: Schedule, device: torch.device, seed: int
) -> dict[str, dict[str, list[float]]]:
    """Seconds per timed round, per implementation and segment (plus the sums ``total`` and
    ``wrapper`` = ascent + descent); each round runs every runner once, in a shuffled order."""
    times = {
        impl: {"ascent": [], "descent": [], "base": [], "total": [], "wrapper": []}
        for impl in runners
    }
    rng = random.Random(seed)
    for r in interleaved_rounds(schedule):
        order = list(runners)
        rng.shuffle(order)
        for impl in order:
            t = runners[impl].iteration(device)
            if r >= schedule.warmup:
                rec = times[impl]
                for k, v in t.items():
                    rec[k].append(v)
                rec["wrapper"].append(t["ascent"] + t["descent"])
                rec["total"].append(t["ascent"] + t["descent"] + t["base"])
    return times


def bench_opt_only(
    name: str, in_ch: int, schedule: Schedule, device: torch.device, seed: int
) -> dict[str, Any]:
    """Times xsam.XSAM and PlainXSAM (k=1, α fixed) on the parameter list of model ``name``."""
    base = param_set(name, in_ch, device, seed)
    grads = make_grads(base, 1, seed)
    runners = {impl: OptOnly(impl, base, grads, 1, FIXED_ALPHA) for impl in ("xsam", "plain")}
    times = time_rounds(runners, schedule, device, seed)
    speed_total = ratios(times["plain"]["total"], times["xsam"]["total"])
    speed_wrap = ratios(times["plain"]["wrapper"], times["xsam"]["wrapper"])
    res = {
        "param_set": name,
        "n_tensors": len(base),
        "n_params": sum(p.numel() for p in base),
        "rounds": len(times["xsam"]["total"]),
        "warmup_rounds": schedule.warmup,
        "times_s": times,
        "median_s": {i: {k: median(v) for k, v in t.items()} for i, t in times.items()},
        "min_s": {i: {k: min(v) for k, v in t.items()} for i, t in times.items()},
        "speedup_total": median(speed_total),
        "speedup_total_ci95": bootstrap_ci(speed_total, seed),
        "speedup_wrapper": median(speed_wrap),
        "speedup_wrapper_ci95": bootstrap_ci(speed_wrap, seed),
    }
    res["met"] = res["speedup_total"] >= TARGET_SPEEDUP
    return res
