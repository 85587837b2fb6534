"""XSAM: eXplicit Sharpness-Aware Minimization (Chen & Zhou, ICLR 2026)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..checks import adaptive_eta, integer, real
from ..norm_stats import frozen_norm_stats
from ._args import FAMILY_KEYWORDS, family_args
from ._core import EPS, SAMFamily
from ._docs import render
from ._update import _as_tensor, _Update
from ._vec import add_scaled_, precise_sq_sums, scale_
from .schedule import PerturbationSchedule

__all__ = ["XSAM", "DEFAULT_ALPHA_GRID", "slerp_coefficients"]

DEFAULT_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(21))
_PARALLEL = 1e-8  # sin ψ below this: v₀ ∥ v₁, use v₁
_XSAM_KEYWORDS = FAMILY_KEYWORDS - {"base_kwargs"}


def slerp_coefficients(alpha: float | Tensor, psi: float | Tensor) -> tuple[Any, Any]:
    """``(a, b)`` with ``v(α) = a·v₀ + b·v₁``: ``a = sin((1−α)ψ)/sin ψ``, ``b = sin(αψ)/sin ψ``,
    and ``(0, 1)`` (v₁) when ``sin ψ < 1e-8``. Works on floats and on tensors."""
    if isinstance(psi, Tensor):
        s = torch.sin(psi)
        parallel = s < _PARALLEL
        safe = torch.where(parallel, torch.ones_like(s), s)
        a = torch.where(parallel, torch.zeros_like(s), torch.sin((1.0 - alpha) * psi) / safe)
        b = torch.where(parallel, torch.ones_like(s), torch.sin(alpha * psi) / safe)
        return a, b
    s = math.sin(psi)
    if s < _PARALLEL:
        return 0.0, 1.0
    return math.sin((1.0 - alpha) * psi) / s, math.sin(alpha * psi) / s


@dataclass
class AlphaSearch:
    """XSAM's α: a fixed value, or α* searched over ``grid`` at the first full update, every
    ``every`` full updates after it (``None``: never again by itself) and whenever requested.
    One object, like :class:`~xsam.optim.schedule.PerturbationSchedule`; its state_dict fields
    keep the names XSAM has always saved (:meth:`to_state`)."""

    auto: bool
    alpha: float  # the fixed α, or the last α* found (1.0 before the first search)
    grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    every: int | None = 400
    searched: bool = False  # a search has run
    since_search: int = 0  # full updates since the last search (that one included)
    requested: bool = False  # request_alpha_search() was called since
    found_now: bool = False  # the update in progress searched
    probe_losses: list[float] | None = None  # the last search's losses, one per grid entry

    @classmethod
    def from_args(cls, alpha: Any, grid: Sequence[float] | None, every: Any) -> AlphaSearch:
        """From XSAM's ``alpha``, ``alpha_grid`` and ``alpha_every`` (checked here)."""
        if isinstance(alpha, str):
            if alpha != "auto":
                raise ValueError(f"alpha must be 'auto' or a real number, got {alpha!r}")
            auto, fixed = True, 1.0
        else:
            auto, fixed = False, real("alpha", alpha, low=-math.inf, strict=True)
        if grid is not None:
            if not auto:
                raise ValueError(f"alpha_grid is only used with alpha='auto', got alpha={alpha!r}")
            try:
                values = [float(a) for a in grid]
            except (TypeError, ValueError):
                raise ValueError(
                    f"alpha_grid must be a sequence of numbers, got {grid!r}"
                ) from None
            if not values or not all(math.isfinite(a) for a in values):
                raise ValueError(f"alpha_grid must be non-empty and finite, got {grid!r}")
            grid = tuple(sorted(set(values)))
        integer("alpha_every", every, low=1, or_none=True)
        return cls(auto, fixed, DEFAULT_ALPHA_GRID if grid is None else grid, every)

    @property
    def mode(self) -> str:
        return "auto" if self.auto else "fixed"

    @property
    def due(self) -> bool:
        """Whether the next full update searches."""
        if not self.auto:
            return False
        if not self.searched or self.requested:
            return True
        return self.every is not None and self.since_search >= self.every

    @property
    def is_sam(self) -> bool:
        """α fixed at 1: d = g_k, k-step SAM exactly."""
        return not self.auto and self.alpha == 1.0

    def request(self) -> None:
        if self.auto:
            self.requested = True

    def found(self, alpha: float) -> None:
        """A search of the update in progress found ``alpha``."""
        self.alpha = alpha
        self.found_now = True

    def update_done(self) -> None:
        """A full update was applied."""
        if self.found_now:
            self.found_now = False
            self.searched = True
            self.requested = False
            self.since_search = 1
        else:
            self.since_search += 1

    def to_state(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "alpha_mode": self.mode,
            "searched": self.searched,
            "since_search": self.since_search,
            "search_requested": self.requested,
        }

    def check_state(self, saved: dict[str, Any]) -> None:
        """Refuse a state saved with another α mode or another fixed α."""
        if saved.get("alpha_mode") != self.mode:
            raise ValueError(
                f"state_dict has alpha_mode={saved.get('alpha_mode')!r}, this optimizer "
                f"{self.mode!r}"
            )
        if not self.auto and float(saved["alpha"]) != self.alpha:
            raise ValueError(
                f"state_dict has the fixed alpha={float(saved['alpha']):g}, this optimizer "
                f"alpha={self.alpha:g}; construct it with the saved alpha to resume"
            )

    def load_state(self, saved: dict[str, Any]) -> None:
        self.alpha = float(saved["alpha"])
        self.searched = bool(saved["searched"])
        self.since_search = int(saved["since_search"])
        self.requested = bool(saved["search_requested"])

    @classmethod
    def from_pickled(cls, state: dict[str, Any]) -> AlphaSearch:
        """From the loose attributes an XSAM pickled before this object existed (taken out of
        ``state``)."""
        return cls(
            auto=state.pop("_auto"),
            alpha=state.pop("_alpha"),
            grid=state.pop("alpha_grid"),
            every=state.pop("alpha_every"),
            searched=state.pop("_searched"),
            since_search=state.pop("_since_search"),
            requested=state.pop("_search_requested"),
            found_now=state.pop("_searched_now", False),
            probe_losses=state.pop("last_probe_losses", None),
        )


def _search_attribute(name: str, doc: str) -> property:
    """A read-write attribute of XSAM backed by its :class:`AlphaSearch`."""

    def get(self: XSAM) -> Any:
        return getattr(self._alpha_search, name)

    def set_(self: XSAM, value: Any) -> None:
        setattr(self._alpha_search, name, value)

    return property(get, set_, doc=doc)


class XSAM(SAMFamily):
    r"""eXplicit Sharpness-Aware Minimization wrapping any torch optimizer.

    One update on the batch ``B``:

    ${ascent}
    2. ``v₀ = (θ_k−θ₀)/(‖θ_k−θ₀‖+ε)``, ``v₁ = g_k/(‖g_k‖+ε)``, ψ the angle between them;
    3. ``v(α) = [sin((1−α)ψ)·v₀ + sin(αψ)·v₁]/sin ψ`` (``v₁`` when ``sin ψ < 1e-8``): the unit
       vector at angle αψ from v₀ towards v₁ (α > 1 extrapolates past v₁);
    4. with ``alpha="auto"``: ``α* = argmax_{α ∈ grid} L(θ₀ + ρ_max·v(α))`` on the same batch,
       forward only, normalisation statistics untouched, ties to the smallest α; searched at the
       first update and then every ``alpha_every`` updates (α* held in between, v₀, v₁, ψ
       recomputed every update);
    5. θ ← θ₀ exactly, gradient ``d = ‖g_k‖·v(α*)``, base optimizer step (momentum, weight
       decay and schedules apply to d as to any gradient).

    ${notation}

    ``alpha=1`` is k-step SAM exactly (``d = g_k``, no extra work); ``rho=0`` is the base
    optimizer alone, bit for bit. Cost per update: ``k + 1`` forward/backward passes plus
    O(#params) vector work; per search: ``len(alpha_grid)`` forward passes. Memory: one
    parameter-sized buffer (θ₀); a search briefly holds one more.

    Args:
        ${params}
        ${base_optimizer}
        rho: total ascent path length ρ (``>= 0``; the paper's CIFAR value 0.15).
        ${steps}
        alpha: ``"auto"`` (search) or a fixed real number (``1`` = SAM, ``0`` = g₀'s direction
            with g_k's length).
        rho_max: probe radius for the search (``> 0``); default ``2·rho`` per group.
        alpha_grid: the α values searched (finite, non-empty; sorted and de-duplicated);
            default ``0, 0.1, …, 2.0``. Only with ``alpha="auto"``.
        alpha_every: updates between searches (``>= 1``), or ``None`` for "only the first update
            and whenever :meth:`request_alpha_search` is called" (a trainer calls it at each
            epoch start, as the paper does). Default 400 = one CIFAR epoch at batch 125, which
            keeps the search cost near 1% of training whatever the data set.
        adaptive, eta: ASAM geometry (see :class:`xsam.SAM`). XSAM then works entirely in ASAM's
            coordinates ``θ̃ = θ/T``, ``T = |θ₀|+η``: v₀, v₁, ψ and the slerp are taken there,
            probes sit at ``θ₀ + ρ_max·T·ṽ(α)`` (on ASAM's ellipsoid) and ``d = T⁻¹·‖T g_k‖·ṽ(α*)``,
            so ``alpha=1`` is again k-step ASAM exactly. Needs ``eta > 0``.
        ${model}
        ${perturbation}
        ${schedule}
            ``alpha_every`` counts full updates only.
        ${base_kwargs}
        ${kwargs}

    Example:
        >>> opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, lr=0.05,
        ...                 momentum=0.9, weight_decay=1e-3, model=model, alpha_every=len(loader))
        >>> def closure():
        ...     loss = F.cross_entropy(model(x), y)
        ...     if torch.is_grad_enabled():   # lets α probes run forward-only
        ...         loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    Departures from the authors' code: ψ is computed as ``2·atan2(‖v₀−v₁‖, ‖v₀+v₁‖)``, the
    well-conditioned form of the clamped arccos (no NaN, full precision near 0 and π; it is the
    true angle of the two directions, where the arccos of the ε-shrunk vectors is off by
    O(ε/‖·‖), about 1e-11 relative); one θ₀
    buffer instead of three; the optimizer owns the ascent loop, statistics and α schedule.

    References:
        ${ref_xsam}
        ${ref_sam}
        ${ref_asam}
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.15,
        steps: int = 1,
        alpha: float | str = "auto",
        rho_max: float | None = None,
        alpha_grid: Sequence[float] | None = None,
        alpha_every: int | None = 400,
        adaptive: bool = False,
        eta: float = 0.01,
        model: nn.Module | None = None,
        perturbation: str | None = None,
        schedule: PerturbationSchedule | Mapping[str, Any] | None = None,
        base_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._alpha_search = AlphaSearch.from_args(alpha, alpha_grid, alpha_every)
        adaptive_eta("eta", eta, adaptive)  # also checked in every param group
        super().__init__(
            params,
            base_optimizer,
            rho_max=rho_max,
            own_keywords=_XSAM_KEYWORDS,
            **family_args(locals()),
            **kwargs,
        )

    # ------------------------------------------------------------------ α schedule
    alpha_grid = _search_attribute("grid", "The α values searched (sorted, distinct).")
    alpha_every = _search_attribute("every", "Full updates between searches, or ``None``.")
    last_probe_losses = _search_attribute(
        "probe_losses", "The last search's probe losses, one per ``alpha_grid`` entry."
    )

    @property
    def alpha(self) -> float:
        """The α in use: the fixed value, or the last α* found by the search."""
        return self._alpha_search.alpha

    @property
    def alpha_mode(self) -> str:
        return self._alpha_search.mode

    def request_alpha_search(self) -> None:
        """Search α at the next update (e.g. at the start of every epoch, as in the paper)."""
        self._alpha_search.request()

    @property
    def search_due(self) -> bool:
        """Whether the next update will run the α search."""
        return self._alpha_search.due

    def _needs_loss_fn(self) -> bool:
        return self.search_due

    def _needs_positive_eta(self) -> bool:
        return True

    def _direction_is_gk(self) -> bool:
        return self._alpha_search.is_sam

    def _on_update_done(self) -> None:
        self._alpha_search.update_done()

    def _state_extra(self) -> dict[str, Any]:
        return self._alpha_search.to_state()

    def _check_extra(self, extra: dict[str, Any]) -> None:
        self._alpha_search.check_state(extra)

    def _load_extra(self, extra: dict[str, Any]) -> None:
        self._alpha_search.load_state(extra)

    def _migrate_pickle(self, state: dict[str, Any]) -> None:
        if "_alpha_search" not in state:  # pickled before α's state was one object
            state["_alpha_search"] = AlphaSearch.from_pickled(state)

    # ------------------------------------------------------------------ the descent
    def _descent(self, u: _Update, grads: list[Tensor], loss_fn: Callable[[], Any] | None) -> bool:
        search, state = self.search_due, self._alpha_search
        if not search and state.is_sam:
            return True  # k-step SAM: d = g_k exactly
        P, T = u.params, u.scale  # notation follows the paper; P doubles as scratch space
        torch._foreach_sub_(P, u.theta0)  # δ = θ_k − θ₀
        if T is not None:  # into ASAM coordinates: δ̃ = δ/T, g̃ = T·g
            torch._foreach_div_(P, T)
            torch._foreach_mul_(grads, T)
        ang = _Angle.measure(P, grads, u, self._reduce, adaptive=T is not None)
        if search:
            ang.unit_vectors(P, grads)  # P = v₀, grads = v₁
            found = self._search(u, grads, ang.psi, loss_fn)
            if found is None:
                return False  # a non-finite probe: the whole update is skipped
            state.found(found)
        a, b = slerp_coefficients(state.alpha, ang.psi)
        # d = ‖g_k‖·v₀ (α* = 0, or v₁ ∥ v₀), and v₀ is g₀'s direction after one ascent step
        u.parallel = (b == 0.0 or math.sin(ang.psi) < _PARALLEL) and self._v0_along_g0()
        k0, k1 = ang.direction_coefficients(a, b)
        u.displacement_coef = ang.n1 * abs(a) / ang.r_delta  # d's coefficient on δ (or T⁻¹δ)
        torch._foreach_mul_(grads, k1)
        add_scaled_(grads, P, k0)  # d̃ = ‖g_k‖·v(α) = k₀·P + k₁·g̃
        if T is not None:
            torch._foreach_div_(grads, T)
        elif type(self)._descent is XSAM._descent:  # (a subclass may change d afterwards)
            # |dᵢ| ≤ |k₀|·‖P‖ + |k₁|·‖g‖: when that is safely finite, d needs no norm
            u.d_finite = ang.bounded(k0, k1, P)
        psi = torch.tensor(ang.psi, dtype=torch.float64)
        self._last.update({"psi": psi, "alpha": state.alpha, "ascent_norm": ang.n0})
        return True

    @torch.no_grad()
    def _search(
        self, u: _Update, v1: list[Tensor], psi: float, loss_fn: Callable[[], Any] | None
    ) -> float | None:
        """α* from the probes, or ``None`` when a probe's loss is not finite (on any rank)."""
        if loss_fn is None:
            raise RuntimeError(
                "XSAM: the alpha search is due but descent_direction()/descent_step() got no "
                "loss_fn; pass a function that returns the loss on the same batch (forward only)"
            )
        P, T = u.params, u.scale
        v0 = [t.clone() for t in P]  # P becomes the probe point
        grads_aside = [p.grad for p in u.owners]  # probing with gradients must not touch v₁
        everyone = self._group_params()
        losses = []
        try:
            with frozen_norm_stats(self.model):
                for alpha in self.alpha_grid:
                    a, b = slerp_coefficients(alpha, psi)
                    torch._foreach_copy_(P, v0)
                    torch._foreach_mul_(P, a)
                    torch._foreach_add_(P, v1, alpha=b)
                    if T is not None:
                        torch._foreach_mul_(P, T)
                    torch._foreach_mul_(P, u.rho_max)
                    torch._foreach_add_(P, u.theta0)
                    for p in everyone:
                        p.grad = None
                    losses.append(_as_tensor(loss_fn()).reshape(()))
        finally:
            for p in everyone:
                p.grad = None
            for p, g in zip(u.owners, grads_aside, strict=True):
                p.grad = g
            torch._foreach_copy_(P, v0)
        wide = torch.float64 if any(t.dtype == torch.float64 for t in losses) else torch.float32
        values = torch.stack([t.to(losses[0].device, wide) for t in losses])
        values = self._dist.mean_over_ranks(values)
        self.last_probe_losses = values.tolist()
        if not bool(torch.isfinite(values).all()):
            return None
        return self.alpha_grid[int(torch.argmax(values))]  # first maximum = smallest α


XSAM.__doc__ = render(XSAM.__doc__)


class _Angle:
    """The angle ψ between v₀ = δ/(‖δ‖+ε) and v₁ = g/(‖g‖+ε), from sums of squares.

    ``measure`` turns ``P`` (holding δ) into ``r₀·(v₀ + σ·v₁)``, ``r₀ = ‖δ‖+ε``: one pass for
    ``P −= c·g`` with ``c = r₀/r₁`` (σ = −1) and one norm, against the three formations and
    un-formations of v₀∓v₁ the direct ``2·atan2(‖v₀−v₁‖, ‖v₀+v₁‖)`` takes. Then
    ``h₋ = ‖v₀−v₁‖²`` comes from that formed difference (as precise as the direct form near
    ψ = 0) and ``h₊ = ‖v₀+v₁‖² = 2‖v₀‖² + 2‖v₁‖² − h₋`` from the precise sums of squares
    (:func:`precise_sq_sums`), which is well conditioned while ``h₊ ≥ 1`` (ψ ≤ 2π/3). Past
    that, towards π, ``v₀+v₁`` is formed as well (σ = +1) and ``h₊`` is its norm, as in the
    direct form. ψ = 2·atan2(√h₋, √h₊); π/2 when both vanish (zero gradients)."""

    def __init__(self, s00: float, s11: float, h_minus: float, h_plus: float, sigma: float):
        self.r0 = math.sqrt(max(s00, 0.0)) + EPS
        self.r_delta = self.r0  # ‖δ‖+ε (r₀ becomes 1 when P is turned into v₀ − σ·v₁)
        self.r1 = math.sqrt(max(s11, 0.0)) + EPS
        self.n0 = torch.tensor(math.sqrt(max(s00, 0.0)), dtype=torch.float64)
        self.n1 = math.sqrt(max(s11, 0.0))
        self.sigma = sigma
        self.h_minus, self.h_plus = h_minus, h_plus
        if h_minus == 0 and h_plus == 0:
            self.psi = math.pi / 2
        else:
            self.psi = 2.0 * math.atan2(math.sqrt(max(h_minus, 0.0)), math.sqrt(max(h_plus, 0.0)))
        self.finite = all(math.isfinite(x) for x in (s00, s11, h_minus, h_plus))
        self.p_norm = self.r0 * math.sqrt(max(h_plus if sigma > 0 else h_minus, 0.0))  # ‖P‖

    @classmethod
    def measure(
        cls, P: list[Tensor], g: list[Tensor], u: _Update, reduce: Any, *, adaptive: bool
    ) -> _Angle:
        if u.gk_sq is not None and not adaptive:
            s00 = precise_sq_sums([P], u.dtype, reduce)[0]
            s11 = u.gk_sq
        else:
            s00, s11 = precise_sq_sums([P, g], u.dtype, reduce)
        r0, r1 = s00.sqrt() + EPS, s11.sqrt() + EPS
        add_scaled_(P, g, -(r0 / r1))  # P = r₀·(v₀ − v₁)
        d_minus = precise_sq_sums([P], u.dtype, reduce)[0]
        s00_, s11_, dm = torch.stack([s00, s11.to(s00.device), d_minus]).tolist()
        r0_ = math.sqrt(max(s00_, 0.0)) + EPS
        h_minus = dm / r0_**2
        h_plus = 2.0 * s00_ / r0_**2 + 2.0 * s11_ / (math.sqrt(max(s11_, 0.0)) + EPS) ** 2
        h_plus -= h_minus
        if not h_plus >= 1.0:  # ψ > 2π/3 (or not finite): form v₀ + v₁ as well
            add_scaled_(P, g, 2.0 * (r0 / r1))  # P = r₀·(v₀ + v₁)
            h_plus = float(precise_sq_sums([P], u.dtype, reduce)[0]) / r0_**2
            return cls(s00_, s11_, h_minus, h_plus, 1.0)
        return cls(s00_, s11_, h_minus, h_plus, -1.0)

    def direction_coefficients(self, a: float, b: float) -> tuple[float, float]:
        """(k₀, k₁) with ‖g‖·(a·v₀ + b·v₁) = k₀·P + k₁·g, P = r₀·(v₀ + σ·v₁)."""
        return self.n1 * a / self.r0, self.n1 * (b - self.sigma * a) / self.r1

    def unit_vectors(self, P: list[Tensor], g: list[Tensor]) -> None:
        """P, g → v₀, v₁ (the α search probes along them)."""
        scale_(g, 1.0 / self.r1)
        scale_(P, 1.0 / self.r0)
        add_scaled_(P, g, -self.sigma)
        self.sigma, self.r0, self.r1, self.p_norm = 0.0, 1.0, 1.0, 1.0  # ‖v₀‖ ≤ 1

    def bounded(self, k0: float, k1: float, P: list[Tensor]) -> bool:
        """Whether every |dᵢ| ≤ |k₀|·‖P‖ + |k₁|·‖g‖ lies safely inside the parameters' range
        and ‖d‖² inside the accumulation type's, which proves d finite without a norm of d."""
        if not (self.finite and math.isfinite(k0) and math.isfinite(k1)):
            return False
        bound = abs(k0) * self.p_norm + abs(k1) * self.n1
        dtypes = {t.dtype for t in P}
        limit = min(torch.finfo(dt).max for dt in dtypes)
        acc = torch.finfo(torch.float64 if torch.float64 in dtypes else torch.float32).max
        return bound < 0.25 * min(limit, math.sqrt(acc))
