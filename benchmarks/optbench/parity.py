"""Parity check, run first: xsam.XSAM and PlainXSAM compute the same descent gradient ``d``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .config import FIXED_ALPHA
from .opt_only import OptOnly, make_grads, param_set


def one_update(
    impl: str, base: list[Tensor], grads: list[list[Tensor]], steps: int, alpha: float
) -> tuple[Tensor, bool, Tensor, OptOnly]:
    """Run one update's vector math; (d flat, θ₀ restored bit-exactly, weights after the
    base step flat, the runner)."""
    o = OptOnly(impl, base, grads, steps, alpha)
    for i in range(steps):
        o.load(i)
        o.opt.ascent_step()
    o.load(steps)
    o.descent()
    d = torch.cat([p.grad.flatten() for p in o.params]).double()
    restored = all(torch.equal(p.detach(), q) for p, q in zip(o.params, base))
    o.base_step()
    w = torch.cat([p.detach().flatten() for p in o.params]).double()
    return d, restored, w, o


def rel_err(a: Tensor, b: Tensor) -> float:
    """Relative L2 error of ``a`` against ``b``."""
    return float((a - b).norm() / b.norm())


def parity_cases(quick: bool) -> list[tuple[str, int, float]]:
    """(parameter set, ascent steps k, α): the timed case (ResNet-18, k=1, α=0.5) and, on the
    ResNet-20 list, α=0.5, extrapolation (α=1.7) and α=0 (skipped when quick), and k=2."""
    cases = [("resnet18", 1, FIXED_ALPHA)]
    if not quick:
        cases += [("resnet20", 1, FIXED_ALPHA), ("resnet20", 1, 1.7), ("resnet20", 1, 0.0)]
    cases += [("resnet20", 2, FIXED_ALPHA)]
    return cases


def parity_row(
    name: str, steps: int, alpha: float, device: torch.device, seed: int
) -> dict[str, Any]:
    """Both implementations on one case, in float32 and in float64."""
    base = param_set(name, 3, device, seed)
    base64 = [p.double() for p in base]
    grads = make_grads(base, steps, seed + steps)
    grads64 = [[g.double() for g in gl] for gl in grads]
    d_x, ok_x, w_x, run = one_update("xsam", base, grads, steps, alpha)
    d_p, ok_p, w_p, _ = one_update("plain", base, grads, steps, alpha)
    d_x64, ok_x64, _, _ = one_update("xsam", base64, grads64, steps, alpha)
    d_p64, ok_p64, _, _ = one_update("plain", base64, grads64, steps, alpha)
    row = {
        "param_set": name,
        "steps": steps,
        "alpha": alpha,
        "psi": float(run.opt.last_stats["psi"]),
        "f64_xsam_vs_plain": rel_err(d_x64, d_p64),
        "f32_xsam_vs_plain": rel_err(d_x, d_p),
        "f32_xsam_vs_f64": rel_err(d_x, d_p64),
        "f32_plain_vs_f64": rel_err(d_p, d_p64),
        "f32_weights_after_step_rel_max": float((w_x - w_p).abs().max() / w_p.abs().max()),
        "theta0_restored_exactly": ok_x and ok_p and ok_x64 and ok_p64,
    }
    row["ok"] = (
        row["f64_xsam_vs_plain"] < 1e-9
        and row["f32_xsam_vs_plain"] < 1e-4
        and row["theta0_restored_exactly"]
    )
    return row


def check_parity(device: torch.device, seed: int, quick: bool) -> list[dict[str, Any]]:
    """xsam.XSAM and PlainXSAM compute the same d and both restore θ₀ exactly; stops the run
    (SystemExit) at the first case that fails.

    Compared twice: in float64, where the two must agree to 1e-9 (the math is the same; only
    the order of the sums and arccos vs atan2 for ψ differ), and in float32, where each is
    also compared with the float64 result: over millions of elements float32 sums carry a
    relative error near 1e-5 for either implementation, so they must agree to 1e-4."""
    out = []
    for name, steps, alpha in parity_cases(quick):
        row = parity_row(name, steps, alpha, device, seed)
        out.append(row)
        if not row["ok"]:
            raise SystemExit(f"parity check failed: {row}")
    return out
