"""The direction probe: how close do SAM's, k-step SAM's and XSAM's directions come to the
direction of the loss maximum on a sphere around θ₀? (docs/algorithm.md §7.)

Notation follows the paper: θ₀ the weights, g₀ = ∇L(θ₀), θ_k the end of the k-step ascent of
total length ρ, g_k = ∇L(θ_k) (applied at θ₀, as SAM does), v₀ = unit(θ_k − θ₀),
v₁ = unit(g_k), v(α) the spherical interpolation between them, and u* the unit direction to the
maximum of L on the sphere ‖δ‖ = ρ_max.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import DEFAULT_ALPHA_GRID, slerp_coefficients
from . import _check
from ._ascent import ascent_args, loss_rank, search_report, sphere_search
from .vectors import EPS, FlatModel, LossFn, cosine, unit

__all__ = [
    "probe_directions",
    "probe_many",
    "claims_summary",
    "cosine_record",
    "sphere_maximum",
    "flatten_result",
]

_DEGENERATE = 1e-8  # ‖v₁ − ⟨v₁,v₀⟩v₀‖ below this: v₀ ∥ v₁, the plane is undefined


# ---------------------------------------------------------------------------------- pieces
@dataclass
class KStep:
    """The k-step ascent and XSAM's choice from it (docs/algorithm.md §3 steps 1–5)."""

    k: int
    theta_k: Tensor
    g_k: Tensor
    v0: Tensor
    v1: Tensor
    psi: float
    alpha_grid: list[float]
    alpha_losses: list[float]
    alpha_star: float
    v_star: Tensor  # v(α*)


def k_step_ascent(
    fm: FlatModel,
    loss_fn: LossFn,
    g0: Tensor,
    *,
    rho: float,
    rho_max: float,
    k: int,
    alpha_grid: Sequence[float],
) -> KStep:
    """Run docs/algorithm.md §3 steps 1–5 from θ₀ = ``fm.theta0`` (whose gradient is ``g0``)."""
    theta, g = fm.theta0, g0
    for _ in range(k):
        theta = theta + (rho / k) * (g / (g.norm() + EPS))
        _, g = fm.loss_and_grad(loss_fn, theta)
    ascent = theta - fm.theta0
    v0 = ascent / (ascent.norm() + EPS)
    v1 = g / (g.norm() + EPS)
    n_minus, n_plus = float((v0 - v1).norm()), float((v0 + v1).norm())
    # the well-conditioned form of arccos(clamp(⟨v₀,v₁⟩)), as the optimizer computes it
    psi = math.pi / 2 if n_minus == 0.0 and n_plus == 0.0 else 2.0 * math.atan2(n_minus, n_plus)
    losses = []
    for alpha in alpha_grid:
        a, b = slerp_coefficients(alpha, psi)
        losses.append(fm.loss(loss_fn, fm.theta0 + rho_max * (a * v0 + b * v1)))
    ranked = [x if not math.isnan(x) else -math.inf for x in losses]
    best = max(range(len(ranked)), key=lambda i: (ranked[i], -i))  # ties: smallest α
    a, b = slerp_coefficients(alpha_grid[best], psi)
    return KStep(
        k=k,
        theta_k=theta,
        g_k=g,
        v0=v0,
        v1=v1,
        psi=psi,
        alpha_grid=list(alpha_grid),
        alpha_losses=losses,
        alpha_star=float(alpha_grid[best]),
        v_star=a * v0 + b * v1,
    )


def plane_basis(
    fm: FlatModel, v0: Tensor, v1: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, bool]:
    """``(e₁, e₂, degenerate)``: e₁ = v₀/‖v₀‖ (zero when g₀ = 0), e₂ = the unit part of v₁
    orthogonal to v₀ (Gram–Schmidt). When v₁ ∥ v₀ the plane is undefined and e₂ is a random
    unit vector orthogonal to v₀ (``degenerate=True``)."""
    e1 = _normalised(v0)
    r = v1 - (v1 @ e1) * e1
    degenerate = float(r.norm()) < _DEGENERATE
    if degenerate:
        r = fm.random_unit(generator)
        r = r - (r @ e1) * e1
    return e1, _normalised(r), degenerate


def _normalised(v: Tensor) -> Tensor:
    # exactly unit (no ε): the basis must be orthonormal to rounding, not to 1e-12
    n = v.norm()
    return v / n if float(n) > 0.0 else v


# ---------------------------------------------------------------------------------- public
def sphere_maximum(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    radius: float,
    directions: dict[str, Tensor] | None = None,
    n_starts: int = 4,
    ascent_iters: int = 50,
    ascent_lr: float = 0.2,
    ascent_tol: float = 1e-6,
    seed: int = 0,
) -> dict[str, Any]:
    """The maximum of ``L(θ₀ + δ)`` over the sphere ‖δ‖ = ``radius``, by projected gradient
    ascent from several starts (the given ``directions``, then ``n_starts`` random ones),
    keeping the best.

    Args:
        model, loss_fn: the model and ``loss_fn(model) -> scalar loss`` on a fixed batch.
        radius: the sphere's radius (> 0).
        directions: named flat vectors (length = the number of trainable weights) to start
            from; zero and duplicate ones are skipped.
        n_starts: number of random starts (>= 0; at least one start in all).
        ascent_iters: trials per start (each a forward pass; accepted ones also a backward).
        ascent_lr: the first step length, in units of ``radius``, along the normalised
            tangential gradient; adapted (×1.5 on success, ×0.5 on failure, at most 1).
        ascent_tol: a start stops once its step length is below this.
        seed: seeds the random starts and the random numbers of every loss evaluation.

    Returns:
        ``direction`` (the unit vector u*, a flat tensor), ``clean_loss``, and the report of
        :func:`probe_directions`' ``u_star`` entry (``loss``, ``increase``, convergence, starts).
    """
    loss_fn = _check.loss_function(loss_fn)
    radius = _check.real("radius", radius, low=0.0, strict=True)
    n_starts = _check.integer("n_starts", n_starts, low=0)
    iters, lr, tol = ascent_args(ascent_iters, ascent_lr, ascent_tol)
    with FlatModel(model, seed=seed) as fm:
        generator = torch.Generator().manual_seed(seed)
        starts = [
            (name, v.detach().to(fm.device, fm.dtype)) for name, v in (directions or {}).items()
        ]
        starts += [(f"random{i}", fm.random_unit(generator)) for i in range(n_starts)]
        if not starts:
            raise ValueError("sphere_maximum needs a start: give directions or n_starts >= 1")
        clean = fm.loss(loss_fn, fm.theta0)
        search = sphere_search(fm, loss_fn, starts, radius=radius, iters=iters, lr=lr, tol=tol)
    report = search_report(search, clean)
    report["direction"] = unit(search.best.delta)
    report["clean_loss"] = clean
    return report


def probe_directions(
    model: nn.Module,
    loss_fn: LossFn,
    *,
    rho: float,
    rho_max: float | None = None,
    max_steps_k: int = 3,
    alpha_grid: Sequence[float] | None = None,
    n_starts: int = 2,
    ascent_iters: int = 40,
    ascent_lr: float = 0.2,
    ascent_tol: float = 1e-6,
    n_plane: int = 360,
    seed: int = 0,
    return_vectors: bool = False,
) -> dict[str, Any]:
    """Measure the paper's claims about directions at the current weights θ₀ (docs/algorithm.md §7).

    Every evaluation uses ``loss_fn`` (one fixed batch), the model in train mode with its
    normalisation statistics frozen, and the same random numbers (see
    :class:`~xsam.analysis.vectors.FlatModel`); the weights are restored bit for bit.

    Computed at θ₀ (flat vectors, global norms, ε = 1e-12):

    * ``g0`` = ∇L(θ₀); for k = 1..K the k-step ascent (steps of ρ/k) and ``gk`` = g_k, the
      gradient at its end point (SAM's direction for k = 1);
    * ``xsamk`` = XSAM's v(α*) from that ascent, α* = argmax over ``alpha_grid`` of
      L(θ₀ + ρ_max·v(α)) (ties: smallest α), exactly as the optimizer chooses it;
    * ``plane_max``: the maximum of L on the circle of radius ρ_max in the v₀–v₁ plane of the
      1-step ascent, by sampling ``n_plane`` equally spaced angles;
    * ``u_star``: the maximum on the sphere ‖δ‖ = ρ_max, by projected gradient ascent (step
      along the tangential gradient, renormalise) from every candidate above and ``n_starts``
      random directions, keeping the best.

    Args:
        model: the model (any ``nn.Module``); its trainable parameters form θ.
        loss_fn: ``loss_fn(model) -> scalar loss tensor`` on a fixed batch or fixed subset.
        rho: the ascent path length ρ (> 0).
        rho_max: the probe radius (> 0); default 2ρ.
        max_steps_k: the largest k probed (>= 1).
        alpha_grid: XSAM's α grid; default :data:`xsam.DEFAULT_ALPHA_GRID`.
        n_starts: random starts for u* (>= 0), besides the candidates.
        ascent_iters: trials per start of the sphere ascent (see :func:`sphere_maximum`).
        ascent_lr: first step length of the sphere ascent, in units of ρ_max.
        ascent_tol: a start stops once its step length is below this.
        n_plane: angles sampled on the in-plane circle (>= 4).
        seed: seeds the random starts and the random numbers of every loss evaluation.
        return_vectors: also return the flat direction vectors under ``"vectors"`` (tensors:
            the result is then no longer JSON-serialisable).

    Returns:
        A dict of plain floats, ints, bools, strings and lists:
        ``clean_loss`` L(θ₀); ``grad_norm`` ‖g₀‖; ``candidates`` (names in order);
        ``cos[name]`` = cos(candidate, u*); ``loss[name]`` = L(θ₀ + ρ_max·unit(candidate));
        ``plane_coords[name]`` = (⟨unit(c), e₁⟩, ⟨unit(c), e₂⟩) in the v₀–v₁ plane (its norm is
        the share of the candidate lying in the plane); ``xsam`` (per k: ``alpha_star``, ``psi``,
        ``cos_v0_v1``, ``ascent_norm``, ``alpha_losses``); ``plane`` (``max_angle`` from v₀
        towards v₁ in radians, ``max_loss``, ``losses`` per angle, ``degenerate``); ``u_star``
        (``loss``, ``increase``, ``best_start``, convergence: ``converged``,
        ``rel_loss_change`` and ``direction_change`` over the last accepted steps,
        ``stationarity`` = ‖tangential gradient‖/‖gradient‖, ``loss_spread`` across starts,
        per-start ``starts``); the settings; ``passes`` (forward and backward counts) and
        ``time_s``.
    """
    loss_fn = _check.loss_function(loss_fn)
    rho, rho_max = _check.rho_pair(rho, rho_max)
    K = _check.integer("max_steps_k", max_steps_k, low=1)
    grid = _check.alpha_grid(alpha_grid, DEFAULT_ALPHA_GRID)
    n_starts = _check.integer("n_starts", n_starts, low=0)
    iters, lr, tol = ascent_args(ascent_iters, ascent_lr, ascent_tol)
    n_plane = _check.integer("n_plane", n_plane, low=4)
    t0 = time.perf_counter()

    with FlatModel(model, seed=seed) as fm:
        generator = torch.Generator().manual_seed(seed)
        clean, g0 = fm.loss_and_grad(loss_fn, fm.theta0)
        steps = [
            k_step_ascent(fm, loss_fn, g0, rho=rho, rho_max=rho_max, k=k, alpha_grid=grid)
            for k in range(1, K + 1)
        ]
        e1, e2, degenerate = plane_basis(fm, steps[0].v0, steps[0].v1, generator)
        angles, plane_losses, j = _plane_circle(fm, loss_fn, e1, e2, rho_max, n_plane)
        plane_max = math.cos(angles[j]) * e1 + math.sin(angles[j]) * e2
        vectors = _candidates(g0, steps, plane_max)
        starts = list(vectors.items())
        starts += [(f"random{i}", fm.random_unit(generator)) for i in range(n_starts)]
        search = sphere_search(fm, loss_fn, starts, radius=rho_max, iters=iters, lr=lr, tol=tol)
        vectors["u_star"] = u_star = unit(search.best.delta)
        cos, losses, coords = _compare(fm, loss_fn, vectors, u_star, rho_max, e1, e2)
        passes = {"forward": fm.evaluations, "backward": fm.gradients}

    result: dict[str, Any] = {
        "rho": rho,
        "rho_max": rho_max,
        "max_steps_k": K,
        "alpha_grid": grid,
        "n_params": fm.numel,
        "seed": seed,
        "clean_loss": clean,
        "grad_norm": float(g0.norm()),
        "candidates": list(vectors),
        "cos": cos,
        "loss": losses,
        "plane_coords": coords,
        "xsam": [_step_report(s, fm.theta0) for s in steps],
        "plane": {
            "n": n_plane,
            "max_angle": angles[j],
            "max_loss": plane_losses[j],
            "xsam_angle": steps[0].alpha_star * steps[0].psi,
            "losses": plane_losses,
            "degenerate": degenerate,
        },
        "u_star": search_report(search, clean),
        "passes": passes,
        "time_s": time.perf_counter() - t0,
    }
    if return_vectors:
        result["vectors"] = {name: v.detach() for name, v in vectors.items()}
    return result


def _compare(fm: Any, loss_fn: LossFn, vectors: dict[str, Tensor], u_star: Tensor,
             radius: float, e1: Tensor, e2: Tensor):  # fmt: skip
    """Per candidate: cos to u*, the loss at θ₀ + radius·unit(candidate), and its coordinates
    in the e₁–e₂ plane."""
    cos = {name: cosine(v, u_star) for name, v in vectors.items()}
    cos["u_star"] = 1.0
    losses = {name: fm.loss(loss_fn, fm.theta0 + radius * unit(v)) for name, v in vectors.items()}
    coords = {name: [float(unit(v) @ e1), float(unit(v) @ e2)] for name, v in vectors.items()}
    return cos, losses, coords


def _candidates(g0: Tensor, steps: Sequence[Any], plane_max: Tensor) -> dict[str, Tensor]:
    """The directions compared with u*, in report order: g0, g1..gK, xsam1..xsamK, plane_max."""
    vectors: dict[str, Tensor] = {"g0": g0}
    vectors.update({f"g{s.k}": s.g_k for s in steps})
    vectors.update({f"xsam{s.k}": s.v_star for s in steps})
    vectors["plane_max"] = plane_max
    return vectors


def _plane_circle(fm: Any, loss_fn: LossFn, e1: Tensor, e2: Tensor, radius: float, n: int):
    """The loss at ``n`` equally spaced angles on the circle of ``radius`` in the e₁–e₂ plane
    around θ₀: (angles, losses, index of the maximum; ties → the first)."""
    angles = [2.0 * math.pi * j / n for j in range(n)]
    losses = [
        fm.loss(loss_fn, fm.theta0 + radius * (math.cos(a) * e1 + math.sin(a) * e2)) for a in angles
    ]
    j = max(range(n), key=lambda i: (loss_rank(losses[i]), -i))
    return angles, losses, j


def _step_report(s: Any, theta0: Tensor) -> dict[str, Any]:
    """What :func:`probe_directions` reports of one k-step ascent and its XSAM direction."""
    return {
        "k": s.k,
        "alpha_star": s.alpha_star,
        "psi": s.psi,
        "cos_v0_v1": math.cos(s.psi),
        "ascent_norm": float((s.theta_k - theta0).norm()),
        "grad_norm": float(s.g_k.norm()),
        "alpha_losses": s.alpha_losses,
    }


def claims_summary(
    result: dict[str, Any], *, far_threshold: float = 0.9
) -> dict[str, bool | float]:
    """The paper's four claims (docs/algorithm.md §7) evaluated on one :func:`probe_directions`
    result (or on the ``mean`` of :func:`probe_many`, which has the same ``cos.*`` keys).

    Keys: ``claim1_g1_beats_g0`` (cos(g₁,u*) > cos(g₀,u*)); ``claim2_cos_g1`` (the value) and
    ``claim2_g1_far`` (cos(g₁,u*) < ``far_threshold``, an arbitrary cut-off for "well below 1");
    ``claim3_gk_decreasing`` (cos(g_k,u*) strictly decreasing over k = 1..K; only when K >= 2);
    ``claim4_xsam_beats_all`` (cos(v(α*),u*) of the 1-step XSAM >= the best of g₀, g₁..g_K) and
    ``claim4_xsam_k_beats_g_k`` (each k: cos(XSAM_k) >= max(cos g₀, cos g_k)). The same claims
    by the loss reached at θ₀ + ρ_max·direction carry the suffix ``_by_loss``. The cosines used
    are included as ``cos_<name>``.
    """
    far_threshold = _check.real("far_threshold", far_threshold)
    cos, loss = _lookup(result, "cos"), _lookup(result, "loss")
    K = int(result["max_steps_k"])
    ks = range(1, K + 1)
    out: dict[str, bool | float] = {f"cos_{name}": value for name, value in cos.items()}
    for values, suffix in ((cos, ""), (loss, "_by_loss")):
        sam_best = max([values["g0"]] + [values[f"g{k}"] for k in ks])
        out["claim1_g1_beats_g0" + suffix] = values["g1"] > values["g0"]
        if K >= 2:
            gk = [values[f"g{k}"] for k in ks]
            out["claim3_gk_decreasing" + suffix] = all(b < a for a, b in zip(gk, gk[1:]))
        out["claim4_xsam_beats_all" + suffix] = values["xsam1"] >= sam_best
        out["claim4_xsam_k_beats_g_k" + suffix] = all(
            values[f"xsam{k}"] >= max(values["g0"], values[f"g{k}"]) for k in ks
        )
    out["claim2_cos_g1"] = cos["g1"]
    out["claim2_g1_far"] = cos["g1"] < far_threshold
    return out


def _lookup(result: dict[str, Any], key: str) -> dict[str, float]:
    if key in result and isinstance(result[key], dict):
        return {k: float(v) for k, v in result[key].items()}
    prefix = key + "."
    found = {k[len(prefix) :]: float(v) for k, v in result.items() if k.startswith(prefix)}
    if not found:
        raise KeyError(f"no {key!r} entries: pass a probe_directions() result or its mean")
    return found


def flatten_result(result: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of a probe result as ``{"cos.g1": …, "loss.g1": …, "u_star.loss": …,
    "xsam.1.alpha_star": …, …}`` (bools as 0/1; lists other than per-k entries dropped)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool) or isinstance(value, (int, float)):
            flat[prefix] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)

    for key, value in result.items():
        if key == "xsam":
            for entry in value:
                walk(f"xsam.{entry['k']}", {k: v for k, v in entry.items() if k != "k"})
        elif key not in ("alpha_grid", "vectors", "candidates", "plane_coords"):
            walk(key, value)
    return flat


def probe_many(
    model: nn.Module,
    loss_fns: Sequence[LossFn],
    *,
    far_threshold: float = 0.9,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`probe_directions` on several batches (one ``loss_fn`` each), with the mean and
    standard deviation (ddof = 1; 0 for one probe) of every scalar entry (keys as in
    :func:`flatten_result`) and, per yes/no claim of :func:`claims_summary`, the fraction of
    probes in which it held (``claims``; ``claims_summary(result["mean"])`` evaluates the claims
    on the mean cosines instead). ``kwargs`` go to :func:`probe_directions` (``return_vectors`` is refused).
    """
    if callable(loss_fns):
        raise TypeError("loss_fns must be a sequence of loss functions, one per batch")
    loss_fns = list(loss_fns)
    if not loss_fns:
        raise ValueError("loss_fns must not be empty")
    if kwargs.get("return_vectors"):
        raise ValueError("probe_many does not return vectors; call probe_directions for them")
    probes = [probe_directions(model, fn, **kwargs) for fn in loss_fns]
    flats = [flatten_result(p) for p in probes]
    keys = [k for k in flats[0] if all(k in f for f in flats)]
    n = len(flats)
    mean = {k: sum(f[k] for f in flats) / n for k in keys}
    std = {
        k: math.sqrt(sum((f[k] - mean[k]) ** 2 for f in flats) / (n - 1)) if n > 1 else 0.0
        for k in keys
    }
    claims = [claims_summary(p, far_threshold=far_threshold) for p in probes]
    held = {
        k: sum(float(c[k]) for c in claims) / n for k, v in claims[0].items() if isinstance(v, bool)
    }
    return {"n": n, "probes": probes, "mean": mean, "std": std, "claims": held}


def cosine_record(result: dict[str, Any], epoch: float) -> dict[str, float]:
    """``{"epoch": epoch, "cos_g0": …, "cos_g1": …, …}`` from a probe result (or a
    :func:`probe_many` result: then also ``cos_<name>_std``), for :func:`plot_cosines`."""
    record: dict[str, float] = {"epoch": float(epoch)}
    if "mean" in result and "probes" in result:
        for key, value in result["mean"].items():
            if key.startswith("cos.") and key != "cos.u_star":
                name = key[4:]
                record[f"cos_{name}"] = value
                record[f"cos_{name}_std"] = result["std"][key]
        return record
    for name, value in result["cos"].items():
        if name != "u_star":
            record[f"cos_{name}"] = float(value)
    return record
