"""The update protocol every SAM-family optimizer shares: begin → ascent → direction →
descent/finish (docs/algorithm.md §3; notation follows the paper):

    clean pass      g₀ = ∇L(θ₀)                                  (closure #0, stats update)
    ascent  i<k     θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε),  gᵢ₊₁ = ∇L(θᵢ₊₁) (closures #1..k, stats frozen)
    descent         d = strategy(θ₀, θ_k, g_k)  — SAM: g_k; XSAM: ‖g_k‖·v(α*)
                    θ ← θ₀ (exact copy), p.grad ← d, base_optimizer.step()

This module owns the perturb / restore / step cycle, the θ₀ buffer, the adaptive (ASAM)
geometry and non-finite handling; a strategy only decides ``d``. What sits around it, one job
per module, is listed in docs/architecture.md. A fix here lands in every variant.

Invariants kept on every path (closure, lower level, exceptions, skips):

* every parameter's ``.grad`` is cleared before each pass, so nothing accumulates across passes;
* a skipped or abandoned update leaves weights, optimizer state and normalisation statistics
  bit-identical, whatever GradScaler (enabled, disabled or none) is involved;
* nothing non-finite reaches the base optimizer: every pass and the direction ``d`` are checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..distributed import Distribution, resolve_distribution
from ..norm_stats import NormStatsSnapshot
from ._args import (
    GROUP_KEYS,
    check_family_args,
    check_family_numbers,
    check_params,
    check_update_params,
    split_base_kwargs,
)
from ._cheap import CheapStep
from ._closure import ClosureStep
from ._docs import render
from ._groups import ParamGroups
from ._guards import ClosureGuards
from ._kernels import EPS, ascent_
from ._passes import PassContexts
from ._reuse import LookSAMReuse
from ._scaler import base_step
from ._state import StateDictMixin
from ._update import Counters, _Update, counter, param_buffers
from ._vec import ReduceFn, acc_dtype, global_sq_sums, precise_sq_sums
from .schedule import PerturbationSchedule

__all__ = ["SAMFamily", "EPS"]


class SAMFamily(
    ClosureStep,
    CheapStep,
    ParamGroups,
    PassContexts,
    ClosureGuards,
    LookSAMReuse,
    StateDictMixin,
    Optimizer,
):
    """Base class of the SAM-family wrappers. Use :class:`xsam.SAM` or :class:`xsam.XSAM`.

    Subclasses implement :meth:`_descent` (write ``d`` into the gradients, θ still at θ_k).

    ${notation}

    References:
        ${ref_sam}
        ${ref_asam}
        ${ref_xsam}
        ${ref_looksam}
    """

    _explicit_kwargs: frozenset[str] = frozenset()

    def __new__(cls, *args: Any, **kwargs: Any) -> SAMFamily:
        # The keywords the caller actually wrote: an argument both the wrapper and the base
        # optimizer accept is ambiguous only if it was written (see _args.split_base_kwargs).
        obj = super().__new__(cls)
        obj._explicit_kwargs = frozenset(kwargs)
        return obj

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float,
        steps: int,
        adaptive: bool,
        eta: float,
        rho_max: float | None,
        model: nn.Module | None,
        perturbation: str | None = None,
        schedule: PerturbationSchedule | Mapping[str, Any] | None = None,
        base_kwargs: Mapping[str, Any] | None = None,
        own_keywords: frozenset[str] = frozenset(),
        **loose_kwargs: Any,
    ) -> None:
        name = type(self).__name__
        check_family_args(base_optimizer, steps=steps, adaptive=adaptive, model=model)
        base_kw = split_base_kwargs(
            name, base_optimizer, loose_kwargs, base_kwargs, self._explicit_kwargs, own_keywords
        )
        rho, eta, rho_max = check_family_numbers(rho=rho, eta=eta, rho_max=rho_max)
        self.schedule = PerturbationSchedule.coerce(
            dict(schedule) if isinstance(schedule, Mapping) else schedule
        )
        self.steps = steps
        self.model = model
        self._base_ready = False
        defaults = {"rho": rho, "rho_max": rho_max, "adaptive": adaptive, "eta": eta}
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kw)
        clash = sorted(set(self.base_optimizer.defaults) & set(GROUP_KEYS))
        if clash:
            raise ValueError(
                f"{base_optimizer.__name__} has its own hyperparameter(s) {clash}, which would "
                f"collide with {name}'s; this base optimizer is not supported"
            )
        # Share the groups: LR schedulers, add_param_group and state_dict then see one truth.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._base_ready = True
        check_params(self.param_groups, self._param_names())

        self._norm_snapshot: NormStatsSnapshot | None = None  # made for self.model when used
        self._stats_saved = False  # the snapshot holds this update's statistics
        self._update: _Update | None = None
        self._counters = Counters()
        self._reuse_valid = False  # the reuse vectors hold the last full update's
        self._left: dict[int, tuple[Any, int]] = {}  # gradients the last update left
        self._warned_skip = False
        self._last: dict[str, Tensor | float] = {}
        all_params = [p for g in self.param_groups for p in g["params"]]
        self._dist: Distribution = resolve_distribution(model, all_params, perturbation)
        self._reduce: ReduceFn | None = (
            self._dist.sum_over_shards if self._dist.kind == "fsdp" else None
        )

    def attach(self, model: nn.Module, perturbation: str | None = None) -> None:
        """Point the optimizer at ``model``, the module the training actually runs through,
        as if it had been given as ``model=``: a framework that builds the optimizer first and
        wraps the model afterwards (``DistributedDataParallel``, FSDP2's ``fully_shard``) calls
        this once the wrapper exists, and the optimizer then synchronises its passes as the
        wrapper requires (see :mod:`xsam.distributed`). The integrations call it themselves.

        ``perturbation``: ``"local"`` or ``"global"``; ``None`` keeps the mode already in
        force under DDP, else the default (``"local"`` under DDP, ``"global"`` under FSDP).
        Raises in the middle of an update, and when ``model`` does not hold every parameter
        this optimizer trains."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"attach: model must be a torch.nn.Module, got {type(model).__name__}")
        if self._update is not None:
            raise RuntimeError("attach() called in the middle of an update; finish it first")
        params = self._group_params()
        owned = {id(p) for p in model.parameters()}
        if any(id(p) not in owned for p in params):
            raise ValueError(
                "attach: the model does not hold every parameter of this optimizer; pass the "
                "module the optimizer's parameters belong to (or its DDP/FSDP wrapper)"
            )
        if perturbation is None and self._dist.active:
            perturbation = self._dist.perturbation
        self._dist = resolve_distribution(model, params, perturbation)
        self._reduce = self._dist.sum_over_shards if self._dist.kind == "fsdp" else None
        self.model = model
        self._norm_snapshot = NormStatsSnapshot(model)
        self._stats_saved = False

    updates = counter("updates")
    skipped_updates = counter("skipped_updates")
    cheap_updates = counter("cheap_updates")
    step_index = counter("step_index")

    @property
    def perturb_due(self) -> bool:
        """Whether the next update is a full sharpness-aware one (``False``: a cheap step, one
        pass; see :class:`xsam.PerturbationSchedule`). Always ``True`` without a schedule."""
        return self.schedule.full(self.step_index)

    @property
    def perturbation(self) -> str:
        """``"local"`` or ``"global"`` (see :mod:`xsam.distributed`); ``"global"`` when single
        process."""
        return self._dist.perturbation

    # ------------------------------------------------------------------ hooks for subclasses
    def _descent(self, u: _Update, grads: list[Tensor], loss_fn: Callable[[], Any] | None) -> bool:
        """Write the descent gradient ``d`` into ``grads`` (θ is at θ_k on entry; the caller
        restores θ₀ afterwards). May use the parameters as scratch space. Returns ``False``
        to skip the update (e.g. a non-finite α probe)."""
        raise NotImplementedError

    def _needs_loss_fn(self) -> bool:
        return False

    def _direction_is_gk(self) -> bool:
        """True when d = g_k (SAM): DDP may then all-reduce the last pass as usual."""
        return True

    def _on_update_done(self) -> None:
        pass

    # ------------------------------------------------------------------ begin
    @property
    def update_in_progress(self) -> bool:
        """Whether :meth:`ascent_step` has started an update that is not finished yet."""
        return self._update is not None

    @torch.no_grad()
    def abort_update(self) -> None:
        """Abandon the update in progress (lower-level path), e.g. after a pass raised (a
        caught out-of-memory error, a bad batch): θ₀ is put back exactly, the normalisation
        statistics recorded by :meth:`clean_pass` are restored, every ``.grad`` is cleared,
        and the optimizer state and counters are left as they were. Does nothing to the
        weights when no update is in progress (``step()`` calls it on an exception)."""
        u, self._update = self._update, None
        if u is not None and u.params:
            torch._foreach_copy_(u.params, u.theta0)
        if u is not None and u.g0 is not None:
            self._reuse_valid = False  # its buffers hold g₀ now, not the reused vector
        self._restore_stats()
        self._clear_grads()

    def _begin(self, *, checked: bool = False) -> _Update:
        if not checked:  # step() has checked the groups already
            self._check_groups()
        owners = self._owners()
        where = {
            id(p): (group, gi, pi)
            for gi, group in enumerate(self.param_groups)
            for pi, p in enumerate(group["params"])
        }
        params = check_update_params(type(self).__name__, owners, where, self._param_names)
        theta0 = param_buffers(self.state, owners, params, "theta0")
        if params:
            torch._foreach_copy_(theta0, params)
        dtype = acc_dtype(params) if params else torch.float32
        u = _Update(owners=owners, params=params, theta0=theta0, dtype=dtype)
        u.set_geometry([where[id(p)][0] for p in owners], self.steps)
        return u

    # ------------------------------------------------------------------ ascent
    @torch.no_grad()
    def ascent_step(self) -> None:
        """Move θᵢ → θᵢ₊₁ along the gradient now in ``.grad`` (call it after the backward of
        the clean pass, then after the backward of each ascent point, ``steps`` times in all).

        The first call checks the param groups, records θ₀ and the parameters the update
        covers. The step is ``(ρ/k)·g/(‖g‖+ε)`` with the norm global over all those
        parameters (adaptive: in ASAM's coordinates, see the class docstring). Every
        parameter's gradient is then set to ``None``, so the next backward starts from zero.
        Normalising makes the step independent of a GradScaler's loss scale: no unscaling is
        needed here. If a pass raises before the update is finished, call
        :meth:`abort_update`."""
        u = self._update
        if u is None:
            if not self.perturb_due:
                raise RuntimeError(
                    f"{type(self).__name__}: the perturbation schedule makes update "
                    f"{self.step_index} a cheap step (opt.perturb_due is False): run no ascent "
                    "pass and call descent_step() after the clean pass"
                )
            u = self._update = self._begin()
        elif u.ascents >= self.steps:
            raise RuntimeError(
                f"ascent_step() called {u.ascents + 1} times in one update but steps={self.steps}; "
                "call descent_step() to finish the update"
            )
        u.ascents += 1
        if not u.params:
            self._clear_grads()
            return
        grads = u.read_grads()
        if u.ascents == 1 and self.schedule.reuse > 0.0:
            u.g0 = self._reuse_buffers(u)
            torch._foreach_copy_(u.g0, grads)
        norm = ascent_(u.params, grads, u.rho, u.scale, u.dtype, self._reduce)
        u.finite.append(torch.isfinite(norm))
        u.grad_norms.append(norm)
        self._clear_grads()

    # ------------------------------------------------------------------ direction
    @torch.no_grad()
    def descent_direction(self, loss_fn: Callable[[], Any] | None = None) -> bool:
        """Finish the update's math: put ``d`` in ``.grad`` and restore θ₀ exactly.

        Call after the backward at the last ascent point. ``loss_fn`` (no arguments, returns the
        loss on the same batch, forward only) is needed when XSAM's α search is due. Returns
        ``True`` if every pass, every α probe and ``d`` itself were finite. If not, θ₀ is
        restored, ``.grad`` holds NaN (a GradScaler's ``step`` then skips and its ``update``
        lowers the scale) and the base optimizer must not step — :meth:`descent_step` does all
        this for you. Parameters outside the update (no gradient in the clean pass; under DDP,
        none on any rank) end with ``.grad = None``, so the base optimizer leaves them alone.

        The update is then finished for this optimizer's bookkeeping, as :meth:`descent_step`
        would: counters, the α search schedule and the perturbation schedule move on, and a
        skipped update puts the normalisation statistics back. Step the base optimizer yourself
        (only when this returned ``True``), e.g. after clipping ``d``; under a GradScaler
        ``.grad`` holds the scaled ``d``: ``scaler.unscale_(opt.base_optimizer)`` first, then
        clip, then ``scaler.step(opt.base_optimizer)``. (:func:`xsam.clip_direction_norm` with
        :meth:`descent_step` does all of this.)"""
        ok = self._descent_direction(loss_fn)
        self._finish(ok)
        return ok

    def _descent_direction(self, loss_fn: Callable[[], Any] | None) -> bool:
        """:meth:`descent_direction` without the bookkeeping (its callers finish the update
        after the base step)."""
        u = self._update
        if u is None or u.ascents != self.steps:
            done = 0 if u is None else u.ascents
            hint = ""
            if u is None and not self.perturb_due:
                hint = " (this update is a cheap step of the schedule: call descent_step())"
            raise RuntimeError(
                f"descent_direction() needs {self.steps} ascent_step() call(s) first, got "
                f"{done}{hint}"
            )
        if not u.params:
            self._update = None
            self._clear_grads()
            return True
        try:
            ok = self._direction(u, loss_fn)
        except BaseException:
            self.abort_update()
            raise
        self._update = None
        torch._foreach_copy_(u.params, u.theta0)
        if u.g0 is not None:
            self._reuse_valid = self._store_reuse(u) if ok else self._drop_reuse()
        if not ok:
            for p in u.owners:
                p.grad = torch.full_like(p, float("nan"))
        self._release_unused(u)
        return ok

    def _direction(self, u: _Update, loss_fn: Callable[[], Any] | None) -> bool:
        """d into the gradients; whether the update may go ahead (agreed over ranks).

        The finiteness of the passes and of d is decided together after the vector math (one
        host synchronisation; harmless on non-finite values since θ₀ is restored from its copy
        and d is discarded). XSAM reads its sums of squares on the host once more, to take the
        angle in float64 (see ``xsam._Angle``). When the α search is due, the passes are checked
        first, so that a non-finite update never spends |A| forward passes."""
        grads = u.read_grads()
        flags = self._pass_flags(u, grads)
        # ρ = 0 everywhere (possible on the lower-level path): d = g_k = g₀, the base step
        # alone, as step() does; XSAM's v₀ would be 0 and its α search meaningless
        flat = u.parallel = self._rho_all_zero()
        if self._needs_loss_fn() and not flat:
            if not self._agree(flags):
                return False
            flags = []
        ok_descent = True if flat else self._descent(u, grads, loss_fn)
        if self._dist.averages_direction and not self._direction_is_gk():
            # local perturbation: mean of per-rank d_r over one rank-independent list
            u.present = self._dist.average_(grads, u.ever)
        proven = u.d_finite and not self._dist.averages_direction
        if not self._direction_is_gk() and not proven:
            d_sq = global_sq_sums([grads], u.dtype, self._reduce)[0]
            flags.append(torch.isfinite(d_sq))
        return self._agree(flags) and ok_descent

    def _pass_flags(self, u: _Update, grads: list[Tensor]) -> list[Tensor]:
        flags = list(u.finite) + [torch.isfinite(t).all() for t in u.losses]
        if self._direction_is_gk():
            gk_sq = global_sq_sums([grads], u.dtype, self._reduce)[0]
        else:  # the strategy's angle needs ‖g_k‖² precisely; finiteness as in u.dtype
            gk_sq = u.gk_sq = precise_sq_sums([grads], u.dtype, self._reduce)[0]
        flags.append(torch.isfinite(gk_sq.to(u.dtype)))
        self._last = {"g0_norm": u.grad_norms[0], "gk_norm": gk_sq.sqrt()}
        return flags

    def _agree(self, flags: list[Tensor]) -> bool:
        """Whether every flag is true on every rank (one host sync)."""
        if not flags:
            return True
        device = flags[-1].device
        return bool(self._dist.agree_all(torch.stack([f.to(device) for f in flags]).all()))

    # ------------------------------------------------------------------ descent, finish
    @torch.no_grad()
    def descent_step(
        self,
        loss_fn: Callable[[], Any] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> bool:
        """:meth:`descent_direction`, then step the base optimizer (through ``scaler.step`` if an
        enabled GradScaler is given, after ``scaler.unscale_``, so that the base optimizer's
        step pre-hooks see ``d`` itself, fused optimizers included; call ``scaler.update()``
        yourself afterwards, as usual).
        Returns whether the update was applied. A skipped update never reaches the base
        optimizer, whatever the scaler (enabled, disabled or none): the weights and the
        optimizer state stay bit-identical, and an enabled scaler still sees the non-finite
        gradient, so its ``update()`` lowers the scale.

        When the schedule makes this update a cheap step (``perturb_due`` was ``False`` before
        the clean pass), call it right after the clean pass, with no ascent pass: it steps the
        base optimizer with the clean gradient (plus the schedule's reuse term)."""
        if self._update is None and not self.perturb_due:
            return self._plain_step(None, cheap=True, scaler=scaler)
        ok = self._descent_direction(loss_fn)
        base_step(self.base_optimizer, ok, scaler)
        self._finish(ok)
        return ok

    def _finish(self, ok: bool, *, full: bool = True) -> None:
        self._counters.count(ok, cheap=not full)
        self._remember_grads()
        if ok:
            if full:
                self._on_update_done()
            self._stats_saved = False
            return
        self._restore_stats()
        self._warn_skip()

    # ------------------------------------------------------------------ introspection
    @property
    def last_stats(self) -> dict[str, float]:
        """Scalars of the last update (floats; reading them synchronises with the device)."""
        return {k: (float(v) if isinstance(v, Tensor) else v) for k, v in self._last.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, base={self.base_optimizer!r})"


SAMFamily.__doc__ = render(SAMFamily.__doc__)
