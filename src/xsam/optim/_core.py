"""The machinery every SAM-family optimizer shares.

One update (docs/algorithm.md §3; notation follows the paper):

    clean pass      g₀ = ∇L(θ₀)                                  (closure #0, stats update)
    ascent  i<k     θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε),  gᵢ₊₁ = ∇L(θᵢ₊₁) (closures #1..k, stats frozen)
    descent         d = strategy(θ₀, θ_k, g_k)  — SAM: g_k; XSAM: ‖g_k‖·v(α*)
                    θ ← θ₀ (exact copy), p.grad ← d, base_optimizer.step()

This module owns the perturb / restore / step cycle, the θ₀ buffer, the adaptive (ASAM)
geometry, normalisation statistics, non-finite handling and the state_dict; a strategy only
decides ``d``. A fix here lands in every variant.

Invariants kept on every path (closure, lower level, exceptions, skips):

* every parameter's ``.grad`` is cleared before each pass, so nothing accumulates across passes;
* a skipped or abandoned update leaves weights, optimizer state and normalisation statistics
  bit-identical, whatever GradScaler (enabled, disabled or none) is involved;
* nothing non-finite reaches the base optimizer: every pass and the direction ``d`` are checked.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..distributed import Distribution, local_tensor, resolve_distribution
from ..policies import NormStatsSnapshot, frozen_norm_stats
from ._args import (
    GROUP_KEYS,
    check_group,
    check_number,
    check_params,
    describe_param,
    split_base_kwargs,
)
from ._vec import (
    ReduceFn,
    acc_dtype,
    add_scaled_,
    global_dots,
    global_norm,
    global_sq_sums,
    precise_sq_sums,
)
from .schedule import PerturbationSchedule

EPS = 1e-12
# gradients held on entry to step(closure) that differ from the clean pass's by more than
# this (relative, in norm) were accumulated over other batches, not a duplicate backward
ENTRY_GRAD_RTOL = 1e-2
# the part of d orthogonal to g₀ is rounding noise below this many ε·‖d‖ (see _store_reuse)
_REUSE_NOISE = 16.0

# kept for the analysis tools, which share the optimizers' rule for numbers
_check_number = check_number

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


@dataclass
class _Update:
    """What one update carries from the clean pass to the descent."""

    owners: list[Tensor]  # the parameters (nn.Parameter or DTensor) the update covers
    params: list[Tensor]  # their local data (the shard under FSDP), where the math happens
    theta0: list[Tensor]
    dtype: torch.dtype
    ascents: int = 0
    # per-tensor ρ/k and ρ_max (None when every group has the same value: one scalar then)
    rho: float | list[float] = 0.0
    rho_max: float | list[float] = 0.0
    scale: list[Tensor] | None = None  # T = |θ₀| + η (adaptive geometry), else None
    finite: list[Tensor] = field(default_factory=list)  # one flag per norm taken
    grad_norms: list[Tensor] = field(default_factory=list)  # ‖gᵢ‖ (in the geometry used)
    losses: list[Tensor] = field(default_factory=list)
    # which owners had a gradient in the last pass read, and in any pass so far (DDP: a
    # parameter no rank used keeps .grad = None, as DDP leaves it)
    present: list[bool] = field(default_factory=list)
    ever: list[bool] = field(default_factory=list)
    # the clean gradient g₀ (θ coordinates), kept for the schedule's reuse (LookSAM); its
    # buffers become the reused unit vector when the update completes
    g0: list[Tensor] | None = None
    # set by _pass_flags when d is not g_k: ‖g_k‖² in float64 (precise_sq_sums); and by a
    # strategy's _descent when its own bound proves d finite (no norm of d needed then)
    gk_sq: Tensor | None = None
    d_finite: bool = False
    # set when d is g₀'s direction in exact arithmetic (ρ = 0; XSAM with α* = 0 and one
    # ascent step): its part orthogonal to g₀ is rounding noise, so no reuse vector is kept
    parallel: bool = False


class SAMFamily(Optimizer):
    """Base class of the SAM-family wrappers. Use :class:`xsam.SAM` or :class:`xsam.XSAM`.

    Subclasses implement :meth:`_descent` (write ``d`` into the gradients, θ still at θ_k)."""

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
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            hint = ""
            if isinstance(base_optimizer, Optimizer):
                hint = " (pass the class, e.g. torch.optim.SGD, and its kwargs, not an instance)"
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer subclass, got {base_optimizer!r}"
                + hint
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {adaptive!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        name = type(self).__name__
        base_kw = split_base_kwargs(
            name, base_optimizer, loose_kwargs, base_kwargs, self._explicit_kwargs, own_keywords
        )
        rho = check_number("rho", rho, low=0.0, strict=False)
        eta = check_number("eta", eta, low=0.0, strict=False)
        if rho_max is not None:
            rho_max = check_number("rho_max", rho_max, low=0.0, strict=True)

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
        self.updates = 0  # applied updates, full and cheap
        self.skipped_updates = 0
        self.cheap_updates = 0  # applied cheap steps (see PerturbationSchedule)
        self.step_index = 0  # every update so far, full or cheap, applied or skipped
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

    # ------------------------------------------------------------------ param groups
    def _needs_positive_eta(self) -> bool:
        return False

    def _param_names(self) -> dict[int, str]:
        model = getattr(self, "model", None)
        if model is None:
            return {}
        return {id(p): n for n, p in model.named_parameters()}

    def _validate_group(self, group: dict[str, Any], where: str = "param group") -> None:
        check_group(group, where, positive_eta=self._needs_positive_eta())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_base_ready", False):
            super().add_param_group(param_group)  # during __init__, before the base exists
            where = f"param_groups[{len(self.param_groups) - 1}]"
            self._validate_group(self.param_groups[-1], where)
            return
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for key in GROUP_KEYS:
            param_group.setdefault(key, self.defaults[key])
        self._validate_group(param_group, f"param_groups[{len(self.param_groups)}]")
        self.base_optimizer.add_param_group(param_group)
        check_params(self.param_groups, self._param_names())

    def _check_groups(self) -> None:
        """At every update: groups added through ``base_optimizer.add_param_group`` get the
        wrapper's defaults, and values set after construction (by hand, by a scheduler) are
        checked like the constructor's."""
        for i, group in enumerate(self.param_groups):
            for key in GROUP_KEYS:
                if key not in group:
                    group[key] = self.defaults[key]
            self._validate_group(group, f"param_groups[{i}]")
        if len({g["adaptive"] for g in self.param_groups}) > 1:
            raise ValueError("adaptive must be the same for every param group")

    def _group_uniform(self, key: str) -> bool:
        values = {g[key] for g in self.param_groups}
        return len(values) == 1

    def _group_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _clear_grads(self) -> None:
        for p in self._group_params():
            p.grad = None

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

    def _state_extra(self) -> dict[str, Any]:
        return {}

    def _check_extra(self, extra: dict[str, Any]) -> None:
        pass

    def _load_extra(self, extra: dict[str, Any]) -> None:
        pass

    def _on_update_done(self) -> None:
        pass

    # ------------------------------------------------------------------ pass contexts
    @contextlib.contextmanager
    def clean_pass(self) -> Iterator[None]:
        """Wrap the forward+backward at θ₀ in this (lower-level path). With ``model=`` it
        records the normalisation running statistics first, so that a skipped or abandoned
        update can put them back; under DDP with local perturbation it keeps the gradient
        local (``no_sync``)."""
        self._save_stats()
        synced = self._dist.perturbation == "global" or not self.perturb_due
        with self._dist.gradient_pass(synced=synced):
            yield

    @contextlib.contextmanager
    def perturbed_pass(self) -> Iterator[None]:
        """Wrap the forward+backward at each ascent point in this (lower-level path): running
        statistics are left untouched (with ``model=``), and under DDP the gradient is synced
        or kept local as the perturbation mode requires."""
        u = self._update
        final = u is not None and u.ascents == self.steps
        synced = self._dist.perturbation == "global" or (final and self._direction_is_gk())
        with frozen_norm_stats(self.model), self._dist.gradient_pass(synced=synced):
            yield

    def _save_stats(self) -> None:
        """Record the running statistics of ``self.model`` as it is now (its buffers are looked
        up at each save, so a model moved or converted after construction is followed)."""
        if self.model is None:
            self._stats_saved = False
            return
        snap = self._norm_snapshot
        if snap is None or snap.model is not self.model:
            snap = self._norm_snapshot = NormStatsSnapshot(self.model)
        snap.save()
        self._stats_saved = True

    def _restore_stats(self) -> None:
        if self._norm_snapshot is not None and self._stats_saved:
            self._norm_snapshot.restore()
        self._stats_saved = False

    # ------------------------------------------------------------------ the update, low level
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

    def _owners(self) -> list[Tensor]:
        """The parameters this update covers. One process: those with a gradient after the
        clean pass. DDP: every parameter that requires a gradient, in group order, so the
        list (and the buffers reduced over it) is the same on every rank even when ranks use
        different parameters; a parameter without a gradient on a rank counts as zero there."""
        if self._dist.kind == "ddp":
            return [p for p in self._group_params() if p.requires_grad]
        return [p for p in self._group_params() if p.grad is not None]

    def _begin(self, *, checked: bool = False) -> _Update:
        if not checked:  # step() has checked the groups already
            self._check_groups()
        owners = self._owners()
        where: dict[int, tuple[dict[str, Any], int, int]] = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                where[id(p)] = (group, gi, pi)
        for p in owners:
            if p.grad is not None and p.grad.is_sparse:
                raise ValueError("sparse gradients are not supported")
            if p.is_meta:
                _, gi, pi = where[id(p)]
                raise RuntimeError(
                    f"{describe_param(p, self._param_names(), gi, pi)} is on the meta device "
                    "and has no values; materialise the model (e.g. module.to_empty(device=...) "
                    "and reset its parameters) before stepping"
                )
        params = [local_tensor(p.detach()) for p in owners]
        if params and len({p.device for p in params}) > 1:
            raise RuntimeError(
                f"{type(self).__name__}: parameters with gradients span several devices "
                f"({sorted({str(p.device) for p in params})}); one device per optimizer is "
                "supported (use one optimizer per device or DDP/FSDP)"
            )
        u = _Update(
            owners=owners,
            params=params,
            theta0=self._theta0_buffers(owners, params),
            dtype=acc_dtype(params) if params else torch.float32,
        )
        groups = [where[id(p)][0] for p in owners]
        self._set_geometry(u, groups)
        return u

    def _theta0_buffers(self, owners: list[Tensor], params: list[Tensor]) -> list[Tensor]:
        theta0 = []
        for o, p in zip(owners, params):
            st = self.state[o]
            buf = st.get("theta0")
            if (
                buf is None
                or buf.shape != p.shape
                or buf.dtype != p.dtype
                or buf.device != p.device
            ):
                buf = st["theta0"] = torch.empty_like(p, memory_format=torch.preserve_format)
            theta0.append(buf)
        if params:
            torch._foreach_copy_(theta0, params)
        return theta0

    def _set_geometry(self, u: _Update, groups: list[dict[str, Any]]) -> None:
        rhos = [g["rho"] / self.steps for g in groups]
        rho_maxes = [g["rho_max"] if g["rho_max"] is not None else 2.0 * g["rho"] for g in groups]
        u.rho = rhos[0] if len(set(rhos)) <= 1 and rhos else rhos
        u.rho_max = rho_maxes[0] if len(set(rho_maxes)) <= 1 and rho_maxes else rho_maxes
        if groups and groups[0]["adaptive"]:
            # T = |θ₀| + η, fixed at θ₀ for all k steps (the ellipsoid is centred there).
            etas = [g["eta"] for g in groups]
            scale = torch._foreach_abs(u.theta0)
            if len(set(etas)) == 1:
                torch._foreach_add_(scale, etas[0])
            else:
                torch._foreach_add_(scale, etas)
            u.scale = scale

    def _grads(self, u: _Update) -> list[Tensor]:
        grads, present = [], []
        for p in u.owners:
            present.append(p.grad is not None)
            if p.grad is None:  # no gradient in this pass: it is zero
                p.grad = torch.zeros_like(p)
            grads.append(local_tensor(p.grad))
        u.present = present
        u.ever = present if not u.ever else [a or b for a, b in zip(u.ever, present)]
        return grads

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
        grads = self._grads(u)
        if u.ascents == 1 and self.schedule.reuse > 0.0:
            u.g0 = self._reuse_buffers(u)
            torch._foreach_copy_(u.g0, grads)
        if u.scale is not None:
            torch._foreach_mul_(grads, u.scale)  # g̃ = T·g
        norm = global_norm(grads, u.dtype, self._reduce)
        u.finite.append(torch.isfinite(norm))
        u.grad_norms.append(norm)
        inv = (norm + EPS).reciprocal()
        if isinstance(u.rho, float) and u.scale is None:
            add_scaled_(u.params, grads, inv * u.rho)  # θ += (ρ/k)·g/(‖g‖+ε), one pass
        else:
            self._ascend_scaled(u, grads, inv)
        self._clear_grads()

    def _ascend_scaled(self, u: _Update, grads: list[Tensor], inv: Tensor) -> None:
        """The ascent step with per-group ρ or in ASAM's coordinates (``grads`` is scratch)."""
        if isinstance(u.rho, float):
            inv = inv * u.rho
        torch._foreach_mul_(grads, inv)
        if not isinstance(u.rho, float):
            torch._foreach_mul_(grads, u.rho)
        if u.scale is not None:
            torch._foreach_mul_(grads, u.scale)  # back to θ coordinates: δθ = T·δθ̃
        torch._foreach_add_(u.params, grads)

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
        grads = self._grads(u)
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

    def _release_unused(self, u: _Update) -> None:
        owned = {id(p) for p in u.owners}
        for p in self._group_params():
            if id(p) not in owned:
                p.grad = None  # picked up in a later pass only: not part of this update
        if self._dist.kind == "ddp":
            # DDP leaves a parameter no rank used without a gradient; so do we
            for p, used in zip(u.owners, u.present, strict=True):
                if not used:
                    p.grad = None

    # ------------------------------------------------------------------ schedule: reuse
    def _reuse_buffers(self, u: _Update) -> list[Tensor]:
        bufs = []
        for o, p in zip(u.owners, u.params):
            st = self.state[o]
            buf = st.get("sam_reuse")
            if (
                buf is None
                or buf.shape != p.shape
                or buf.dtype != p.dtype
                or buf.device != p.device
            ):
                buf = st["sam_reuse"] = torch.empty_like(p, memory_format=torch.preserve_format)
            bufs.append(buf)
        self._reuse_valid = False  # from here on the buffers hold g₀
        return bufs

    def _v0_along_g0(self) -> bool:
        """Whether the ascent displacement θ_k − θ₀ is g₀'s direction in exact arithmetic
        (one ascent step, one ρ for every group, the rank's own g₀ the one reused)."""
        return self.steps == 1 and self._group_uniform("rho") and not self._dist.averages_direction

    def _drop_reuse(self) -> bool:
        """Keep no reuse vector (cheap steps then use the clean gradient alone)."""
        for p in self._group_params():
            if p in self.state:
                self.state[p].pop("sam_reuse", None)
        return False

    def _store_reuse(self, u: _Update) -> bool:
        """LookSAM's reused vector: the unit part of d orthogonal to g₀, in g₀'s buffers.
        Under DDP with local perturbation each rank's part is averaged (d is already the
        average, g₀ is the rank's own), so every replica keeps the same vector.

        No vector when that part is rounding noise: when d is g₀'s direction in exact
        arithmetic (``u.parallel``), and when its norm is below ``_REUSE_NOISE``·ε·‖d‖ (ε of
        the parameters' widest-rounding dtype), where the buffers are set to zero."""
        if u.parallel:
            return self._drop_reuse()
        g0, d = u.g0, [local_tensor(p.grad) for p in u.owners]
        assert g0 is not None
        sums, d_sq = global_sq_sums([g0, d], u.dtype, self._reduce)
        dot = global_dots(d, g0, u.dtype, self._reduce)
        coef = torch.where(sums > 0, dot / sums.clamp_min(torch.finfo(u.dtype).tiny), 0.0)
        torch._foreach_mul_(g0, -coef)
        torch._foreach_add_(g0, d)  # d − (⟨d,g₀⟩/‖g₀‖²)·g₀
        if self._dist.averages_direction:
            self._dist.average_(g0, u.ever)
        norm = global_norm(g0, u.dtype, self._reduce)
        noise = _REUSE_NOISE * max(torch.finfo(t.dtype).eps for t in g0) * d_sq.sqrt()
        torch._foreach_mul_(g0, torch.where(norm > noise, (norm + EPS).reciprocal(), 0.0))
        owned = {id(o) for o in u.owners}
        for p in self._group_params():
            if id(p) not in owned and p in self.state:
                self.state[p].pop("sam_reuse", None)  # not part of the last full update
        return True

    def _apply_reuse(self, owners: list[Tensor], grads: list[Tensor], sq: Tensor) -> Tensor:
        """A cheap step's gradient: g + λ·‖g‖·v (v = 0 for parameters outside it), formed in
        ``sq``'s dtype (float32 or wider: λ‖g‖ and the sum may exceed half precision's range
        where g + λ‖g‖·v does not) and rounded once into ``.grad``. Returns the sum of squares
        of the gradients the base optimizer now receives (non-finite where that rounding
        overflowed). No host synchronisation."""
        pairs = [
            (g, self.state[p]["sam_reuse"])
            for p, g in zip(owners, grads)
            if p in self.state and "sam_reuse" in self.state[p]
        ]
        if pairs:
            gs, vs = (list(t) for t in zip(*pairs))
            wide = [g.to(sq.dtype) for g in gs]  # g itself when it is of that dtype already
            coef = sq.sqrt() * self.schedule.reuse
            torch._foreach_add_(wide, torch._foreach_mul([v.to(sq.dtype) for v in vs], coef))
            narrow = [(g, w) for g, w in zip(gs, wide) if w is not g]
            if narrow:
                torch._foreach_copy_(*(list(t) for t in zip(*narrow)))
        return global_sq_sums([grads], sq.dtype, self._reduce)[0]

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
        self._base_step(ok, scaler)
        self._finish(ok)
        return ok

    def _base_step(self, ok: bool, scaler: torch.amp.GradScaler | None) -> None:
        if scaler is not None and scaler.is_enabled():
            if ok:
                _unscale(scaler, self.base_optimizer)
                scaler.step(self.base_optimizer)
            else:
                with _step_disabled(self.base_optimizer):
                    scaler.step(self.base_optimizer)
        elif ok:
            self.base_optimizer.step()

    def _finish(self, ok: bool, *, full: bool = True) -> None:
        self.step_index += 1
        self._remember_grads()
        if ok:
            self.updates += 1
            if full:
                self._on_update_done()
            else:
                self.cheap_updates += 1
            self._stats_saved = False
            return
        self.skipped_updates += 1
        self._restore_stats()
        if not self._warned_skip:
            self._warned_skip = True
            warnings.warn(
                f"{type(self).__name__}: non-finite loss or gradient; update skipped and the "
                "weights left unchanged (counted in .skipped_updates; warned once)",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ the update, closure
    def _rho_all_zero(self) -> bool:
        return all(g["rho"] == 0.0 for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run one whole update. ``closure`` does forward + backward on the current batch and
        returns the loss; it is called ``steps + 1`` times (every gradient cleared before each
        call), plus forward-only probes when XSAM's α search is due. Returns the clean-pass
        loss, detached.

        Without a closure ``step()`` raises, except for the state-initialisation call that
        ``torch.distributed.checkpoint`` makes on a fresh optimizer (every learning rate 0 and
        every gradient zero): that steps the base optimizer if it has no state yet, which
        creates its state and leaves the weights unchanged."""
        if closure is None:
            if self._is_state_init_call():
                # DCP asks again whenever this wrapper's own state is empty (before the first
                # update): stepping an initialised base again would decay its momentum.
                if not self.base_optimizer.state:
                    self.base_optimizer.step()
                return None
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that runs forward and backward "
                "(SAM-family updates evaluate the gradient at several points); for loops a "
                "closure cannot express use ascent_step() / descent_step(); in a Hugging Face "
                "Trainer (which calls step() without one) use "
                "xsam.integrations.transformers.SAMTrainer"
            )
        if self._update is not None:
            raise RuntimeError("step() called in the middle of an ascent_step() sequence")
        held = self._check_entry_grads()
        self._check_groups()
        grad_closure = torch.enable_grad()(closure)
        try:
            self._clear_grads()
            full = self.perturb_due
            if self._rho_all_zero() or not full:
                self._save_stats()
                with self._dist.gradient_pass(synced=True):
                    loss = grad_closure()
                self._compare_entry_grads(held)
                self._plain_step(loss, cheap=not full)
                return _detached(loss)
            with self.clean_pass():
                loss = grad_closure()
            self._compare_entry_grads(held)
            u = self._update = self._begin(checked=True)
            u.losses.append(_as_tensor(loss))
            for _ in range(self.steps):
                self.ascent_step()
                with self.perturbed_pass():
                    u.losses.append(_as_tensor(grad_closure()))
            loss_fn = self._probe_fn(closure) if self._needs_loss_fn() else None
            ok = self._descent_direction(loss_fn)
            self._base_step(ok, None)
            self._finish(ok)
            return _detached(loss)
        except BaseException:
            self.abort_update()  # an exception mid-update: θ₀ and the statistics back
            raise

    def _is_state_init_call(self) -> bool:
        grads = [p.grad for p in self._group_params() if p.grad is not None]
        if not grads or self._update is not None:
            return False
        lrs_zero = all(float(g.get("lr", 1.0)) == 0.0 for g in self.param_groups)
        return lrs_zero and all(not bool(g.any()) for g in grads)

    def _plain_step(
        self, loss: Any, *, cheap: bool, scaler: torch.amp.GradScaler | None = None
    ) -> bool:
        """One pass's gradient, then the base step: ρ = 0 everywhere (exactly the base
        optimizer) or a cheap step of the schedule (the clean gradient, plus the reuse term
        when the schedule has one and a full update has left its vector). Skipped, changing
        nothing, when the loss or the gradient the base optimizer would receive (the reuse
        term included) is not finite."""
        owners = [p for p in self._group_params() if p.grad is not None]
        grads = [local_tensor(p.grad) for p in owners]
        ok = True
        if grads:
            sq = global_sq_sums([grads], acc_dtype(grads), self._reduce)[0]
            finite = torch.isfinite(sq) & torch.isfinite(_as_tensor(loss)).to(sq.device).all()
            if cheap and self._reuse_valid and self.schedule.reuse > 0.0:
                # check what the base optimizer will receive, reuse term included
                finite = finite & torch.isfinite(self._apply_reuse(owners, grads, sq))
            ok = bool(self._dist.agree_all(finite))
            if not ok and scaler is not None and scaler.is_enabled():
                for p in owners:  # the scaler must see the skip to lower its scale
                    p.grad = torch.full_like(p, float("nan"))
        if cheap:
            self._last = {"g0_norm": sq.sqrt() if grads else torch.zeros(())}
        elif self.schedule.reuse > 0.0:  # a full update with ρ = 0: d = g₀, nothing to reuse
            self._reuse_valid = self._drop_reuse()
        self._base_step(ok, scaler)
        self._finish(ok, full=not cheap)
        return ok

    # ------------------------------------------------------------------ gradients on entry
    def _remember_grads(self) -> None:
        """Note the gradients this update leaves (d, or NaN after a skip), so that the next
        ``step()`` can tell them from gradients a backward outside the closure put there."""
        self._left = {
            id(p): (weakref.ref(p.grad), p.grad._version)
            for p in self._group_params()
            if p.grad is not None
        }

    def _ours(self, p: Tensor) -> bool:
        left = self._left.get(id(p))
        return left is not None and left[0]() is p.grad and left[1] == p.grad._version

    def _check_entry_grads(self) -> list[tuple[str, Tensor, Tensor]]:
        """``step(closure)`` computes every gradient itself and clears ``.grad`` first. Refuse
        a step that a framework's hidden accumulation would make wrong (Accelerate's), and
        return the non-zero gradients a backward outside the closure put there (as
        ``(name, parameter, gradient)``; references, not copies): :meth:`_compare_entry_grads`
        tells accumulation from a duplicate backward once the clean pass has run. Costs one
        dictionary look-up per parameter when every gradient is this optimizer's own."""
        self._refuse_accelerate_accumulation()
        foreign = [
            (i, p)
            for i, p in enumerate(self._group_params())
            if p.grad is not None and p.requires_grad and not self._ours(p)
        ]
        if not foreign:
            return []
        anys = [local_tensor(p.grad).ne(0).any() for _, p in foreign]
        flags = torch.stack([a.to(anys[0].device) for a in anys])  # one host sync
        held = [(i, p) for (i, p), nz in zip(foreign, flags.tolist()) if nz]
        if not held:
            return []  # zero_grad(set_to_none=False): nothing is lost
        names = self._param_names()
        return [(names.get(id(p), f"parameter {i}"), p, p.grad) for i, p in held]

    def _compare_entry_grads(self, held: list[tuple[str, Tensor, Tensor]]) -> None:
        """After the clean pass: gradients held on entry that differ from the clean pass's
        own were accumulated over other batches (a framework's ``accumulate_grad_batches``,
        micro-batches summed by hand), which ``step(closure)`` cannot use: raise. Equal ones
        (a duplicate backward on the same batch) only cost work: warn, once."""
        if not held:
            return
        entry = [local_tensor(g) for _, _, g in held]
        clean = [
            local_tensor(p.grad) if p.grad is not None else torch.zeros_like(e)
            for (_, p, _), e in zip(held, entry)
        ]
        dtype = acc_dtype(entry)
        diff = torch._foreach_sub([e.to(dtype) for e in entry], [c.to(dtype) for c in clean])
        d_sq, e_sq, c_sq = global_sq_sums([diff, entry, clean], dtype).tolist()
        name, who = held[0][0], type(self).__name__
        if d_sq > (ENTRY_GRAD_RTOL**2) * max(e_sq, c_sq):
            raise RuntimeError(
                f"{who}.step(closure): the gradients held when it was called (e.g. {name!r}) "
                "differ from the closure's own: they were accumulated by backward() outside "
                "the closure (a framework's accumulate_grad_batches, micro-batches summed by "
                "hand), and step(closure), which computes every gradient itself, would train "
                "on the last micro-batch only. With Lightning use "
                "xsam.integrations.lightning.SAMModule; by hand, accumulate with the "
                "lower-level API (clean_pass / ascent_step / perturbed_pass / descent_step); "
                "if those gradients are stale, call zero_grad() before step()"
            )
        if self._warned_entry_grads:
            return
        self._warned_entry_grads = True
        warnings.warn(
            f"{who}.step(closure) discarded the gradient {name!r} (and maybe others) held "
            "when it was called, equal to the clean pass's own (a backward outside the "
            "closure on the same batch): it computes every gradient itself, so that backward "
            "was wasted work; call zero_grad() before step() (warned once)",
            RuntimeWarning,
            stacklevel=4,
        )

    def _refuse_accelerate_accumulation(self) -> None:
        """Accelerate's ``AcceleratedOptimizer.step()`` does nothing on the micro-batches that
        do not sync under ``gradient_accumulation_steps > 1``: a closure step would never run
        those batches (and ``accelerator.backward`` divides every loss by the count)."""
        n = _accelerate_accumulation()
        if n > 1:
            raise RuntimeError(
                f"{type(self).__name__}.step(closure) called by Accelerate with "
                f"gradient_accumulation_steps={n}: Accelerate skips the optimizer step on the "
                "micro-batches that do not sync, so their closures never run and those "
                "batches are never trained on. Leave gradient_accumulation_steps at 1 and run "
                "each update over its micro-batches with "
                "xsam.integrations.accelerate.sam_update(accelerator, opt, batches, loss_fn)"
            )

    _warned_entry_grads = False

    def _probe_fn(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        """A forward-only loss from a forward+backward closure.

        Probes run the closure under ``torch.no_grad()``. A closure that calls ``backward()``
        unconditionally fails there; we then fall back, for this optimizer, to probing with
        gradients (the backward is wasted work and its gradients are discarded) and say how
        to avoid it: guard the backward with ``if torch.is_grad_enabled():``."""

        def probe() -> Any:
            if not self._probe_with_grad:
                try:
                    with torch.no_grad():
                        out = closure()
                    self._check_probe_grads()
                    return out
                except RuntimeError as err:
                    if "does not require grad" not in str(err):
                        raise
                    self._probe_with_grad = True
                    warnings.warn(
                        f"{type(self).__name__}: the closure calls backward() under "
                        "torch.no_grad(), so alpha probes run with gradients (about 3x their "
                        "cost). Write `if torch.is_grad_enabled(): loss.backward()` in the "
                        "closure to make them forward-only.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            with torch.enable_grad():
                return closure()

        return probe

    _probe_with_grad = False
    _warned_probe_grad = False

    def _check_probe_grads(self) -> None:
        """A closure that turns gradients back on itself (``torch.enable_grad()`` inside, as
        some frameworks' closures do) runs a backward in every α probe: say so, once."""
        if self._warned_probe_grad or all(p.grad is None for p in self._group_params()):
            return
        self._warned_probe_grad = True
        warnings.warn(
            f"{type(self).__name__}: an alpha probe ran backward although it was called under "
            "torch.no_grad() (the closure enables gradients itself), so probes cost about 3x a "
            "forward pass. Make the closure forward-only when torch.is_grad_enabled() is False "
            "on entry, or use the lower-level API with a forward-only loss_fn.",
            RuntimeWarning,
            stacklevel=5,
        )

    # ------------------------------------------------------------------ state
    def _schedule_state(self) -> dict[str, Any]:
        extra = {
            "type": type(self).__name__,
            "steps": self.steps,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "step_index": self.step_index,
            "cheap_updates": self.cheap_updates,
            "schedule": self.schedule.to_dict(),
            "reuse_valid": self._reuse_valid,
        }
        extra.update(self._state_extra())
        return extra

    def _param_index(self, groups: list[dict[str, Any]]) -> list[tuple[Tensor, Any]]:
        """(parameter, its key in a state_dict's "state") in the order torch numbers them."""
        keys = [k for g in groups for k in g["params"]]
        return list(zip(self._group_params(), keys))

    def _pack_reuse(self, sd: dict[str, Any]) -> None:
        """The schedule's reuse vectors travel in the per-parameter state (key
        ``"sam_reuse"``), where checkpoint tools that reshard state keep them."""
        if self.schedule.reuse == 0.0:
            return
        state = dict(sd["state"])
        for p, key in self._param_index(sd["param_groups"]):
            if not p.requires_grad:
                continue
            buf = self.state[p].get("sam_reuse") if p in self.state else None
            if buf is None:  # zeros mean "no reused component" and give the entry a shape, so
                buf = torch.zeros_like(local_tensor(p.detach()))  # DCP's templates have it
            state[key] = {**state.get(key, {}), "sam_reuse": buf}
        sd["state"] = state

    def _unpack_reuse(self, sd: dict[str, Any]) -> dict[Any, Tensor]:
        state, found = {}, {}
        for key, entry in sd.get("state", {}).items():
            entry = dict(entry)
            if "sam_reuse" in entry:
                found[key] = entry.pop("sam_reuse")
            if entry:
                state[key] = entry
        sd["state"] = state
        return found

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state_dict (its state and the shared param groups, which hold
        ρ and friends) plus this wrapper's schedule under the key ``"sam_family"``.

        The schedule is also stored in every param group (key ``"sam_family"``), so that tools
        which keep only ``"state"`` and ``"param_groups"`` (``torch.distributed.checkpoint``'s
        ``get_optimizer_state_dict``) keep it too. State-dict hooks registered on this
        optimizer run as they do on any torch optimizer."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = self.base_optimizer.state_dict()
        self._pack_reuse(sd)
        extra = self._schedule_state()
        sd["param_groups"] = [{**g, "sam_family": dict(extra)} for g in sd["param_groups"]]
        sd["sam_family"] = extra
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        groups = [dict(g) for g in sd.get("param_groups", [])]
        in_groups = [g.pop("sam_family", None) for g in groups]
        sd["param_groups"] = groups
        extra = sd.pop("sam_family", None)
        if extra is None and in_groups:
            extra = in_groups[0]
        self._check_schedule(extra)  # every check before anything is loaded: a refused
        self._check_extra(extra)  # state_dict leaves this optimizer exactly as it was
        reuse = self._unpack_reuse(sd)
        self.base_optimizer.load_state_dict(sd)
        self.param_groups = self.base_optimizer.param_groups
        self.updates = int(extra["updates"])
        self.skipped_updates = int(extra["skipped_updates"])
        self.step_index = int(extra.get("step_index", self.updates + self.skipped_updates))
        self.cheap_updates = int(extra.get("cheap_updates", 0))
        self._reuse_valid = bool(extra.get("reuse_valid", False))
        for p, key in self._param_index(sd["param_groups"]):
            if p in self.state:
                self.state[p].pop("sam_reuse", None)
            if key in reuse:
                self.state[p]["sam_reuse"] = reuse[key].to(p.device, p.dtype, copy=True)
        self._load_extra(extra)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _check_schedule(self, extra: Any) -> None:
        if not isinstance(extra, dict):
            raise ValueError(
                "state_dict has no 'sam_family' entry: it was not saved by a SAM-family "
                "optimizer (to load a base optimizer's state, use .base_optimizer.load_state_dict)"
            )
        if extra.get("type") != type(self).__name__:
            raise ValueError(
                f"state_dict was saved by {extra.get('type')}, cannot load into {type(self).__name__}"
            )
        if extra.get("steps") != self.steps:
            raise ValueError(
                f"state_dict has steps={extra.get('steps')}, this optimizer {self.steps}"
            )
        saved = extra.get("schedule", PerturbationSchedule().to_dict())
        if saved != self.schedule.to_dict():
            raise ValueError(
                f"state_dict was saved with schedule {saved}, this optimizer has "
                f"{self.schedule.to_dict()}; construct it with the saved schedule to resume"
            )

    # ------------------------------------------------------------------ copy and pickle
    def __getstate__(self) -> dict[str, Any]:
        """``copy.deepcopy`` and ``pickle`` keep everything (base optimizer, schedule, model
        reference, statistics snapshot). Copying the optimizer and its model together
        (``copy.deepcopy((model, opt))``) gives a pair that trains exactly like the original.
        Hooks are not copied (as for torch optimizers). Refused in the middle of an update
        and under DDP/FSDP (process groups cannot be copied): save ``state_dict()`` then."""
        if self._update is not None:
            raise RuntimeError(
                f"cannot copy or pickle {type(self).__name__} in the middle of an update; "
                "finish it with descent_step() or call abort_update() first"
            )
        if self._dist.active:
            raise RuntimeError(
                f"cannot copy or pickle {type(self).__name__} under DDP/FSDP (process groups "
                "cannot be copied); save opt.state_dict() and load it into a new optimizer"
            )
        state = dict(self.__dict__)
        for key in _HOOK_DICTS:
            state.pop(key, None)
        # weak references do not copy: keep the positions of the gradients the last update left
        state["_left"] = [i for i, p in enumerate(self._group_params()) if self._ours(p)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        left = state.pop("_left", [])
        super().__setstate__(state)
        params = self._group_params()
        self._left = {}
        for i in left if isinstance(left, list) else []:
            if i < len(params) and params[i].grad is not None:
                g = params[i].grad
                self._left[id(params[i])] = (weakref.ref(g), g._version)

    # ------------------------------------------------------------------ introspection
    @property
    def last_stats(self) -> dict[str, float]:
        """Scalars of the last update (floats; reading them synchronises with the device)."""
        return {k: (float(v) if isinstance(v, Tensor) else v) for k, v in self._last.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, base={self.base_optimizer!r})"


def _unscale(scaler: torch.amp.GradScaler, opt: Optimizer) -> None:
    """Unscale ``opt``'s gradients now, unless that was done since the scaler's last update.

    ``GradScaler.step`` does not unscale an optimizer that takes the scale into its own kernel
    (``_step_supports_amp_scaling``: ``fused=True`` SGD, Adam, AdamW, Adagrad): its step
    pre-hooks (the clipping of ``d``) would see ``scale·d``. Unscaled first, every optimizer
    and every hook sees ``d`` itself; ``scaler.step`` then passes no scale to a fused kernel
    and still skips on the inf check recorded here."""
    states = getattr(scaler, "_per_optimizer_states", None)
    stage = states[id(opt)].get("stage") if states is not None else None
    if stage is None or getattr(stage, "name", "READY") == "READY":
        scaler.unscale_(opt)


@contextlib.contextmanager
def _step_disabled(opt: Optimizer) -> Iterator[None]:
    """``opt.step`` does nothing inside: lets a GradScaler record a skipped update (and lower
    its scale) without any chance of the base optimizer applying it."""
    had = "step" in opt.__dict__
    old = opt.__dict__.get("step")
    opt.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had:
            opt.step = old  # type: ignore[method-assign]
        else:
            del opt.step


def _accelerate_accumulation(depth: int = 12) -> int:
    """``gradient_accumulation_steps`` of the Accelerate ``AcceleratedOptimizer`` whose
    ``step()`` is calling this optimizer's, or 1 (at once when accelerate is not imported)."""
    wrapper = getattr(sys.modules.get("accelerate.optimizer"), "AcceleratedOptimizer", None)
    if wrapper is None:
        return 1
    frame = sys._getframe(1)
    for _ in range(depth):  # its step, torch's step wrappers (and a GradScaler's), ours
        if frame is None:
            break
        if frame.f_code.co_name == "step":
            caller = frame.f_locals.get("self")
            if isinstance(caller, wrapper):
                return int(caller.gradient_state.num_steps)
        frame = frame.f_back
    return 1


def _as_tensor(loss: Any) -> Tensor:
    if isinstance(loss, Tensor):
        return loss.detach()
    if loss is None:
        return torch.zeros(())
    return torch.as_tensor(float(loss))


def _detached(loss: Any) -> Any:
    return loss.detach() if isinstance(loss, Tensor) else loss
