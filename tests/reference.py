"""Plain, independent reference implementation of ONE XSAM update (docs/algorithm.md §3).

This module is a parity oracle for the tests, written without looking at ``xsam.optim``.
It is deliberately slow and literal: every tensor is flattened into one global vector with
``torch.cat`` (so every norm and dot product is global over all parameters in all groups, as
§3 requires), the formulas are written exactly as in the spec, and each block is tagged with
the step of docs/algorithm.md §3 it implements. Everything is computed in the parameters' dtype;
the tests use float64.

Normalisation running statistics are protected by a mechanism deliberately different from a
"switch momentum off" trick: the buffers of every module in ``bn_modules`` are snapshotted
before each non-clean forward pass and copied back afterwards.

Notation follows the paper / docs/algorithm.md: θ₀ current weights, gᵢ = ∇L_B(θᵢ), k = ``steps``,
v₀ ascent displacement direction, v₁ direction of g_k, ψ their angle, v(α) the slerp.

Choices where the spec is silent (see also the report in the tests' module docstring):

* Parameters with ``requires_grad=False`` are ignored entirely (not perturbed, ``.grad``
  untouched). Parameters that require grad but receive no gradient in the clean pass
  (``autograd.grad`` returns None) are "inactive": excluded from every global vector, never
  perturbed, their ``.grad`` is set to None before ``base_step`` (so torch optimizers skip
  them), and their entry in the returned ``d`` is None. If an active parameter gets no
  gradient in a later pass, that gradient is taken as zero.
* When ρ = 0 for every group the reported ``alpha`` is whatever was passed (None included),
  ``psi`` is 0.0, ``gk_norm`` equals ``g0_norm`` (d = g₀), ``probe_losses`` is None.
* ``g0_norm`` / ``gk_norm`` are plain Euclidean norms of the raw gradients even when
  ``adaptive=True``; the transformed norm ‖T g_k‖ is reported as ``gk_tnorm``.
* With per-group ρ, v₀ is the (global) direction of θ_k − θ₀ literally, which for k = 1 is no
  longer parallel to g₀ when the groups' ρ differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

# The default α grid: 0, 0.1, ..., 2.0 (21 points), each the float nearest the decimal value,
# so that the grid contains 1.0 exactly (then α* = 1 triggers the exact k-step-SAM branch).
DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(i * 0.1, 10) for i in range(21))

# §3 step 4: below this sin ψ the two directions are (anti)parallel and the slerp is undefined.
SIN_PSI_MIN = 1e-8


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _per_group(value: float | Sequence[float], n_groups: int, name: str) -> list[float]:
    """Broadcast a scalar to every group, or check a per-group list has the right length."""
    if isinstance(value, (int, float)):
        return [float(value)] * n_groups
    values = [float(v) for v in value]
    if len(values) != n_groups:
        raise ValueError(f"{name} has {len(values)} entries but there are {n_groups} groups")
    return values


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One global vector: all tensors flattened and concatenated (groups, then params)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _pieces(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cut a global vector back into tensors shaped like ``like`` (inverse of ``_flat``)."""
    out = []
    offset = 0
    for t in like:
        n = t.numel()
        out.append(vec[offset : offset + n].reshape(t.shape).clone())
        offset += n
    return out


def _set_params(params: Sequence[torch.Tensor], flat_values: torch.Tensor) -> None:
    """Overwrite the parameters with the values in a global vector (exact copy)."""
    with torch.no_grad():
        for p, value in zip(params, _pieces(flat_values, params)):
            p.copy_(value)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of a global vector (0-dim tensor, same dtype)."""
    return torch.linalg.vector_norm(x)


def _snapshot_buffers(
    modules: Sequence[torch.nn.Module],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of every buffer (running_mean, running_var, num_batches_tracked, ...)."""
    saved = []
    for m in modules:
        for buf in m.buffers():
            saved.append((buf, buf.detach().clone()))
    return saved


def _restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buf, copy in saved:
            buf.copy_(copy)


def _spread(
    pieces: Sequence[torch.Tensor], active: Sequence[int], n: int
) -> list[torch.Tensor | None]:
    """A list of length n holding pieces[j] at index active[j] and None elsewhere."""
    out: list[torch.Tensor | None] = [None] * n
    for i, piece in zip(active, pieces):
        out[i] = piece
    return out


def _gradient_pass(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    bn_modules: Sequence[torch.nn.Module],
) -> torch.Tensor:
    """∇L_B at the current parameter values, as a global vector; BN stats left untouched."""
    saved = _snapshot_buffers(bn_modules)
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    _restore_buffers(saved)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return _flat(grads)


def _probe_loss(
    loss_fn: Callable[[], torch.Tensor], bn_modules: Sequence[torch.nn.Module]
) -> float:
    """L_B at the current parameter values, no gradients, BN stats left untouched."""
    saved = _snapshot_buffers(bn_modules)
    with torch.no_grad():
        loss = float(loss_fn())
    _restore_buffers(saved)
    return loss


# --------------------------------------------------------------------------------------------
# the update
# --------------------------------------------------------------------------------------------
def _clean_pass(loss_fn, all_params, trainable):
    """The clean pass at θ₀ (the only one allowed to update BN running stats): the loss, the
    indices of the parameters with a gradient and of those without, and g₀ flat."""
    with torch.enable_grad():
        loss0_t = loss_fn()
        grads0 = torch.autograd.grad(loss0_t, [all_params[i] for i in trainable], allow_unused=True)
    active = [i for i, g in zip(trainable, grads0) if g is not None]
    inactive = [i for i, g in zip(trainable, grads0) if g is None]
    g0 = _flat([g for g in grads0 if g is not None])
    return float(loss0_t.detach()), active, inactive, g0


def _finish(d_flat, all_params, active, inactive, base_step) -> list[torch.Tensor | None]:
    """§3 step 6 tail: p.grad = d for active params, None for inactive ones; base step."""
    params = [all_params[i] for i in active]
    pieces = _pieces(d_flat, params)
    for p, piece in zip(params, pieces):
        p.grad = piece.clone()
    for i in inactive:
        all_params[i].grad = None
    base_step()
    return _spread(pieces, active, len(all_params))


def _per_element(values, params, groups, like: torch.Tensor) -> torch.Tensor:
    """One flat vector: every element of ``params[j]`` carries ``values[groups[j]]``."""
    return torch.cat(
        [
            torch.full((p.numel(),), values[gi], dtype=like.dtype, device=like.device)
            for p, gi in zip(params, groups)
        ]
    )


def _ascend(params, loss_fn, g0, rho_vec, k, T, eps, bn_modules) -> torch.Tensor:
    """§3 steps 1–2: k ascent steps θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε) (no projection; with ASAM's
    T when given), leaving the parameters at θ_k; returns g_k = ∇L_B(θ_k) on the same batch."""
    g = g0
    for _ in range(k):
        if T is not None:
            Tg = T * g  # gradient in the transformed coordinates w̃ = T⁻¹w
            step = (rho_vec / k) * T * Tg / (_norm(Tg) + eps)  # = ρ/k · T²g/‖Tg‖
        else:
            step = (rho_vec / k) * g / (_norm(g) + eps)
        with torch.no_grad():
            for p, piece in zip(params, _pieces(step, params)):
                p.add_(piece)
        g = _gradient_pass(loss_fn, params, bn_modules)  # gᵢ₊₁ at θᵢ₊₁ (BN restored)
    return g


def _scaled(displacement, T):
    """T⁻¹·δ (ASAM's coordinates), δ itself without T."""
    return displacement / T if T is not None else displacement


def _angle(displacement, g_k, T, eps):
    """§3 step 3: v₀ (the ascent displacement's unit vector), v₁ (g_k's), ‖g_k‖ and
    ψ = arccos(clamp(⟨v₀,v₁⟩,−1,1)), in ASAM's transformed coordinates when T is given."""
    if T is not None:
        disp_t = displacement / T  # T⁻¹(θ_k − θ₀)
        gk_t = T * g_k  # T g_k
    else:
        disp_t = displacement
        gk_t = g_k
    v0 = disp_t / (_norm(disp_t) + eps)
    gk_tnorm = _norm(gk_t)
    v1 = gk_t / (gk_tnorm + eps)
    psi = torch.arccos(torch.clamp(torch.dot(v0, v1), -1.0, 1.0))
    return v0, v1, gk_tnorm, psi


_RESULT_KEYS = (
    "loss0", "alpha", "psi", "d", "probe_losses", "g0_norm", "gk_norm", "gk_tnorm",
    "theta_k", "v0", "v1", "alpha_grid", "displacement_coef",
)  # fmt: skip


def _result(*values) -> dict:
    """The update's report, keyed as :func:`reference_update` documents."""
    return dict(zip(_RESULT_KEYS, values, strict=True))


def _probe_grid(params, loss_fn, theta0, rho_max_vec, grid, v_of, T, bn_modules) -> list:
    """§3 step 5's probes: L_B(θ₀ + ρ_max·v(α)) for every α of the grid, without gradients and
    with normalisation buffers untouched (v(α) mapped back by T under ASAM)."""
    losses = []
    for a in grid:
        direction = T * v_of(a) if T is not None else v_of(a)  # back to w coordinates
        _set_params(params, theta0 + rho_max_vec * direction)
        losses.append(_probe_loss(loss_fn, bn_modules))
    return losses


def _argmax_alpha(grid: list[float], losses: list[float]) -> float:
    """§3 step 5's choice: the α of the largest probe loss; NaN probes ignored; ties → the
    smallest α (the grid is sorted)."""
    best_value = -math.inf
    alpha_star = grid[0]
    for a, value in zip(grid, losses):
        if math.isnan(value):
            value = -math.inf  # NaN probes are ignored
        if value > best_value:  # strict: a later tie does not replace the smaller α
            best_value = value
            alpha_star = a
    return alpha_star


def _descent(g_k, gk_tnorm, v_star, alpha_star, psi, displacement, T, eps):
    """§3 step 6: ``d = ‖g_k‖·v(α*)`` (``T⁻¹(‖T g_k‖·ṽ(α*))`` under ASAM; ``g_k`` itself at
    α* = 1), and d's coefficient on ``T⁻¹(θ_k − θ₀)``, through which the displacement's
    rounding enters d (0 at α* = 1 and when sin ψ < 1e-8, where v(α) = v₁)."""
    if alpha_star == 1.0:
        return g_k.clone(), 0.0
    coef = 0.0
    sin_psi = torch.sin(psi)
    if float(sin_psi) >= SIN_PSI_MIN:
        a = torch.sin((1.0 - alpha_star) * psi) / sin_psi
        coef = float(gk_tnorm * a.abs() / (_norm(_scaled(displacement, T)) + eps))
    d_t = gk_tnorm * v_star
    return (d_t / T if T is not None else d_t), coef


def reference_update(
    params_groups: list[list[torch.Tensor]],
    loss_fn: Callable[[], torch.Tensor],
    base_step: Callable[[], None],
    *,
    rho: float | list[float],
    steps: int = 1,
    alpha: float | None = 1.0,
    rho_max: float | list[float] | None = None,
    alpha_grid: Sequence[float] | None = None,
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
    bn_modules: Sequence[torch.nn.Module] = (),
) -> dict:
    """One XSAM update, literally as docs/algorithm.md §3 (plus ASAM geometry when ``adaptive``).

    Args:
        params_groups: the parameters, grouped as the base optimizer's param groups.
        loss_fn: recomputes the loss on the SAME batch at the current parameter values
            (forward only; this function calls ``torch.autograd.grad`` itself).
        base_step: steps the base optimizer, which reads ``p.grad``.
        rho: total ascent path length ρ, one value or one per group.
        steps: number of ascent steps k (≥ 1).
        alpha: fixed α, or None to search the grid now.
        rho_max: probe radius, one value or one per group; default 2ρ per group.
        alpha_grid: candidate α values; default 0, 0.1, ..., 2.0.
        adaptive: ASAM geometry with T = |θ₀| + η (elementwise, fixed at θ₀).
        eta: η of the adaptive geometry.
        eps: ε added to every normalising norm.
        bn_modules: normalisation modules whose buffers may only change in the clean pass.

    Returns:
        dict with ``loss0``, ``alpha`` (the α used), ``psi``, ``d`` (list over all params in
        group-then-param order; None for inactive ones), ``probe_losses`` (grid order, or
        None), ``g0_norm``, ``gk_norm``, and for the tests' convenience ``gk_tnorm``,
        ``theta_k`` (list like ``d``), ``v0``/``v1`` (global vectors over active params, in
        transformed coordinates when adaptive) and ``alpha_grid`` (sorted, as used).
    """
    k = int(steps)
    if k < 1:
        raise ValueError(f"steps should be >= 1 but is: {steps}")
    rhos = _per_group(rho, len(params_groups), "rho")
    rho_maxs = (
        [2.0 * r for r in rhos] if rho_max is None else _per_group(rho_max, len(rhos), "rho_max")
    )
    grid = sorted(float(a) for a in (DEFAULT_ALPHA_GRID if alpha_grid is None else alpha_grid))

    all_params = [p for group in params_groups for p in group]
    group_of = [gi for gi, group in enumerate(params_groups) for _ in group]
    trainable = [i for i, p in enumerate(all_params) if p.requires_grad]

    # ---- clean pass at θ₀: loss0, g₀; the only pass allowed to update BN running stats -----
    loss0, active, inactive, g0 = _clean_pass(loss_fn, all_params, trainable)
    params = [all_params[i] for i in active]
    g0_norm = _norm(g0)

    def finish(d_flat: torch.Tensor) -> list[torch.Tensor | None]:
        return _finish(d_flat, all_params, active, inactive, base_step)

    # ---- ρ = 0 everywhere: the base optimizer alone, bit for bit (d = g₀, no more passes) ---
    if all(r == 0.0 for r in rhos):
        theta_k_list = _spread([p.detach().clone() for p in params], active, len(all_params))
        d_list = finish(g0.clone())
        n0 = float(g0_norm)
        return _result(
            loss0, alpha, 0.0, d_list, None, n0, n0, n0, theta_k_list, None, None, grid, 0.0
        )  # fmt: skip

    # per-element ρ and ρ_max (each element carries its group's value)
    rho_vec = _per_element(rhos, [all_params[i] for i in active], [group_of[i] for i in active], g0)
    rho_max_vec = _per_element(
        rho_maxs, [all_params[i] for i in active], [group_of[i] for i in active], g0
    )

    # save θ₀ (the exact copy restored at the end)
    theta0 = _flat(params).clone()
    # ASAM: T = |θ₀| + η, fixed at θ₀ for all k steps (T ≡ 1 is the plain geometry)
    T = theta0.abs() + eta if adaptive else None

    # ---- §3 step 1: k ascent steps θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε); no projection ----------
    # ---- §3 step 2: g_k = ∇L_B(θ_k) on the same batch (last gradient of the loop) ----------
    g_k = _ascend(params, loss_fn, g0, rho_vec, k, T, eps, bn_modules)
    theta_k = _flat(params).clone()
    theta_k_list = _spread(_pieces(theta_k, params), active, len(all_params))

    # ---- §3 step 3: v₀ (ascent displacement), v₁ (g_k), ψ = arccos(clamp(⟨v₀,v₁⟩,−1,1)) ----
    v0, v1, gk_tnorm, psi = _angle(theta_k - theta0, g_k, T, eps)
    sin_psi = torch.sin(psi)

    # ---- §3 step 4: v(α) = [sin((1−α)ψ)·v₀ + sin(αψ)·v₁] / sin ψ; v₁ if sin ψ < 1e-8 ------
    def v_of(a: float) -> torch.Tensor:
        if float(sin_psi) < SIN_PSI_MIN:
            return v1
        return (torch.sin((1.0 - a) * psi) * v0 + torch.sin(a * psi) * v1) / sin_psi

    # ---- §3 step 5: α* = argmax_α L_B(θ₀ + ρ_max·v(α)), no grad, BN untouched, ties → smallest
    probe_losses = None
    if alpha is None:
        probe_losses = _probe_grid(params, loss_fn, theta0, rho_max_vec, grid, v_of, T, bn_modules)
        alpha_star = _argmax_alpha(grid, probe_losses)
    else:
        alpha_star = float(alpha)

    # ---- §3 step 6: d = ‖g_k‖·v(α*) (α* = 1 exactly: d = g_k, k-step SAM) -----------------
    d, coef = _descent(g_k, gk_tnorm, v_of(alpha_star), alpha_star, psi, theta_k - theta0, T, eps)

    # restore θ₀ exactly, set p.grad = d, let the base optimizer step
    _set_params(params, theta0)
    d_list = finish(d)

    return _result(
        loss0, alpha_star, float(psi), d_list, probe_losses, float(g0_norm),
        float(_norm(g_k)), float(gk_tnorm), theta_k_list, v0, v1, grid, coef,
    )  # fmt: skip


def reference_sam_update(
    params_groups: list[list[torch.Tensor]],
    loss_fn: Callable[[], torch.Tensor],
    base_step: Callable[[], None],
    *,
    rho: float | list[float],
    steps: int = 1,
    adaptive: bool = False,
    eta: float = 0.01,
    eps: float = 1e-12,
    bn_modules: Sequence[torch.nn.Module] = (),
) -> dict:
    """k-step SAM (ASAM when ``adaptive``): :func:`reference_update` with α fixed at 1."""
    return reference_update(
        params_groups,
        loss_fn,
        base_step,
        rho=rho,
        steps=steps,
        alpha=1.0,
        adaptive=adaptive,
        eta=eta,
        eps=eps,
        bn_modules=bn_modules,
    )


# --------------------------------------------------------------------------------------------
# perturbation schedules with LookSAM's reuse (docs/schedules.md)
# --------------------------------------------------------------------------------------------
REUSE_NOISE = 16.0  # a remainder below this many ε·(‖d‖ + carried) is rounding noise


def displacement_rounding(
    theta0: torch.Tensor,
    rho: torch.Tensor,
    coef: float,
    steps: int,
    T: torch.Tensor | None = None,
) -> float:
    """The rounding (in units of ε) that XSAM's d carries from the displacement θ_k − θ₀,
    recovered by a subtraction: each of the ``steps`` ascent steps rounds θ by up to ε·|θ₀|, and
    d holds T⁻¹δ with coefficient ``coef`` (:func:`reference_update`'s ``displacement_coef``),
    so k·|coef|·‖θ₀/T²‖ over the entries that moved (``rho`` > 0, flat like ``theta0``)."""
    moved = theta0[rho != 0]
    if T is not None:
        moved = moved / T[rho != 0] ** 2
    return steps * abs(coef) * float(_norm(moved))


def reference_reuse_vector(
    d: torch.Tensor,
    g0: torch.Tensor,
    *,
    parallel: bool,
    carried: float = 0.0,
    eps: float = 1e-12,
) -> torch.Tensor | None:
    """LookSAM's reused vector after a full update, from the flat direction ``d`` and clean
    gradient ``g0``: the unit vector of ``r = d − (⟨d,g₀⟩/‖g₀‖²)·g₀``, or None (no vector) when
    ``d`` is g₀'s direction in exact arithmetic (``parallel``) or
    ‖r‖ ≤ 16·ε_dtype·(‖d‖ + ``carried``), ``carried`` the rounding d brings from how it was
    formed (:func:`displacement_rounding` for XSAM; 0 for SAM, whose d is g_k)."""
    if parallel:
        return None
    sq = torch.dot(g0, g0)
    r = d - (torch.dot(d, g0) / sq) * g0 if float(sq) > 0 else d.clone()
    if float(_norm(r)) <= REUSE_NOISE * torch.finfo(d.dtype).eps * (float(_norm(d)) + carried):
        return None
    return r / (_norm(r) + eps)


def reference_cheap_step(
    params: Sequence[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    base_step: Callable[[], None],
    v: torch.Tensor | None,
    lam: float,
) -> torch.Tensor:
    """A cheap step of the schedule: one gradient pass (the only one: it may update BN
    statistics), then the base step with ``g + λ·‖g‖·v`` (``g`` alone without a vector).
    Returns g, flat."""
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, list(params))
    g = _flat(grads)
    direction = g if v is None else g + lam * _norm(g) * v
    for p, piece in zip(params, _pieces(direction, params)):
        p.grad = piece.clone()
    base_step()
    return g
