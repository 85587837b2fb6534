"""The machinery every SAM-family optimizer shares.

One update (ALGORITHM.md §3; notation follows the paper):

    clean pass      g₀ = ∇L(θ₀)                                  (closure #0, stats update)
    ascent  i<k     θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε),  gᵢ₊₁ = ∇L(θᵢ₊₁) (closures #1..k, stats frozen)
    descent         d = strategy(θ₀, θ_k, g_k)  — SAM: g_k; XSAM: ‖g_k‖·v(α*)
                    θ ← θ₀ (exact copy), p.grad ← d, base_optimizer.step()

This module owns the perturb / restore / step cycle, the θ₀ buffer, the adaptive (ASAM)
geometry, normalisation statistics, non-finite handling and the state_dict; a strategy only
decides ``d``. A fix here lands in every variant.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..distributed import Distribution, local_tensor, resolve_distribution
from ..policies import NormStatsSnapshot, frozen_norm_stats
from ._vec import ReduceFn, acc_dtype, global_norm, global_sq_sums

EPS = 1e-12

# Hyperparameters the wrapper stores in every param group (so they are per-group, saved by
# state_dict and reachable by schedulers). A base optimizer that uses one of these names for
# its own hyperparameter would read our value: that is refused at construction.
GROUP_KEYS = ("rho", "rho_max", "adaptive", "eta")


def _check_number(name: str, value: Any, *, low: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= low if strict else value < low)
    if bad:
        rule = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be finite and {rule}, got {value!r}")
    return value


@dataclass
class _Update:
    """What one update carries from the clean pass to the descent."""

    owners: list[Tensor]  # the parameters (nn.Parameter or DTensor)
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


class SAMFamily(Optimizer):
    """Base class of the SAM-family wrappers. Use :class:`xsam.SAM` or :class:`xsam.XSAM`.

    Subclasses implement :meth:`_descent` (write ``d`` into the gradients, θ still at θ_k)."""

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
        **base_kwargs: Any,
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
        collide = sorted(set(base_kwargs) & set(GROUP_KEYS))
        if collide:
            raise ValueError(f"unexpected keyword argument(s) {collide} for the base optimizer")
        rho = _check_number("rho", rho, low=0.0, strict=False)
        eta = _check_number("eta", eta, low=0.0, strict=False)
        if rho_max is not None:
            rho_max = _check_number("rho_max", rho_max, low=0.0, strict=True)

        self.steps = steps
        self.model = model
        self._base_ready = False
        defaults = {"rho": rho, "rho_max": rho_max, "adaptive": adaptive, "eta": eta}
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        clash = sorted(set(self.base_optimizer.defaults) & set(GROUP_KEYS))
        if clash:
            raise ValueError(
                f"{base_optimizer.__name__} has its own hyperparameter(s) {clash}, which would "
                f"collide with {type(self).__name__}'s; this base optimizer is not supported"
            )
        # Share the groups: LR schedulers, add_param_group and state_dict then see one truth.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._base_ready = True

        self._norm_snapshot = NormStatsSnapshot(model) if model is not None else None
        self._update: _Update | None = None
        self.updates = 0  # completed (non-skipped) updates
        self.skipped_updates = 0
        self._warned_skip = False
        self._last: dict[str, Tensor | float] = {}
        all_params = [p for g in self.param_groups for p in g["params"]]
        self._dist: Distribution = resolve_distribution(model, all_params, perturbation)
        self._reduce: ReduceFn | None = (
            self._dist.sum_over_shards if self._dist.kind == "fsdp" else None
        )

    @property
    def perturbation(self) -> str:
        """``"local"`` or ``"global"`` (see :mod:`xsam.distributed`); ``"global"`` when single
        process."""
        return self._dist.perturbation

    # ------------------------------------------------------------------ param groups
    def _validate_group(self, group: dict[str, Any]) -> None:
        group["rho"] = _check_number("rho", group["rho"], low=0.0, strict=False)
        group["eta"] = _check_number("eta", group["eta"], low=0.0, strict=False)
        if not isinstance(group["adaptive"], bool):
            raise TypeError(f"adaptive must be a bool, got {group['adaptive']!r}")
        if group["rho_max"] is not None:
            group["rho_max"] = _check_number("rho_max", group["rho_max"], low=0.0, strict=True)
        for p in group["params"]:
            if isinstance(p, Tensor) and (p.is_complex() or p.is_sparse):
                raise ValueError("complex and sparse parameters are not supported")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not getattr(self, "_base_ready", False):
            super().add_param_group(param_group)  # during __init__, before the base exists
            self._validate_group(self.param_groups[-1])
            return
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        for key in GROUP_KEYS:
            param_group.setdefault(key, self.defaults[key])
        self._validate_group(param_group)
        self.base_optimizer.add_param_group(param_group)

    def _group_uniform(self, key: str) -> bool:
        values = {g[key] for g in self.param_groups}
        return len(values) == 1

    # ------------------------------------------------------------------ hooks for subclasses
    def _descent(self, u: _Update, grads: list[Tensor], loss_fn: Callable[[], Any] | None) -> None:
        """Write the descent gradient ``d`` into ``grads`` (θ is at θ_k on entry; the caller
        restores θ₀ afterwards). May use the parameters as scratch space."""
        raise NotImplementedError

    def _needs_loss_fn(self) -> bool:
        return False

    def _direction_is_gk(self) -> bool:
        """True when d = g_k (SAM): DDP may then all-reduce the last pass as usual."""
        return True

    def _state_extra(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, extra: dict[str, Any]) -> None:
        pass

    def _on_update_done(self) -> None:
        pass

    # ------------------------------------------------------------------ pass contexts
    @contextlib.contextmanager
    def clean_pass(self) -> Iterator[None]:
        """Wrap the forward+backward at θ₀ in this (lower-level path). Under DDP with local
        perturbation it keeps the gradient local (``no_sync``); otherwise it does nothing."""
        with self._dist.gradient_pass(synced=self._dist.perturbation == "global"):
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

    # ------------------------------------------------------------------ the update, low level
    def _begin(self) -> _Update:
        owners, rhos, rho_maxes, etas, adaptive = [], [], [], [], []
        for group in self.param_groups:
            rmax = group["rho_max"] if group["rho_max"] is not None else 2.0 * group["rho"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("sparse gradients are not supported")
                owners.append(p)
                rhos.append(group["rho"] / self.steps)
                rho_maxes.append(rmax)
                etas.append(group["eta"])
                adaptive.append(group["adaptive"])
        params = [local_tensor(p.detach()) for p in owners]
        if params and len({p.device for p in params}) > 1:
            raise RuntimeError(
                f"{type(self).__name__}: parameters with gradients span several devices "
                f"({sorted({str(p.device) for p in params})}); one device per optimizer is "
                "supported (use one optimizer per device or DDP/FSDP)"
            )
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
        u = _Update(
            owners=owners,
            params=params,
            theta0=theta0,
            dtype=acc_dtype(params) if params else torch.float32,
        )
        u.rho = rhos[0] if len(set(rhos)) == 1 else rhos
        u.rho_max = rho_maxes[0] if len(set(rho_maxes)) == 1 else rho_maxes
        if any(adaptive):
            if not all(adaptive):
                raise ValueError("adaptive must be the same for every param group")
            # T = |θ₀| + η, fixed at θ₀ for all k steps (the ellipsoid is centred there).
            scale = torch._foreach_abs(theta0)
            if len(set(etas)) == 1:
                torch._foreach_add_(scale, etas[0])
            else:
                torch._foreach_add_(scale, etas)
            u.scale = scale
        return u

    def _grads(self, u: _Update) -> list[Tensor]:
        grads = []
        for p in u.owners:
            if p.grad is None:  # no gradient in this pass: it is zero
                p.grad = torch.zeros_like(p)
            grads.append(local_tensor(p.grad))
        return grads

    @torch.no_grad()
    def ascent_step(self) -> None:
        """Move θᵢ → θᵢ₊₁ along the gradient now in ``.grad`` (call it after the backward of
        the clean pass, then after the backward of each ascent point, ``steps`` times in all).

        The first call records θ₀ and the set of parameters that have a gradient. The step is
        ``(ρ/k)·g/(‖g‖+ε)`` with the norm global over all those parameters (adaptive: in ASAM's
        coordinates, see the class docstring). Gradients are consumed and set to ``None``, so
        the next backward starts from zero. Normalising makes the step independent of a
        GradScaler's loss scale: no unscaling is needed here."""
        u = self._update
        if u is None:
            u = self._update = self._begin()
        elif u.ascents >= self.steps:
            raise RuntimeError(
                f"ascent_step() called {u.ascents + 1} times in one update but steps={self.steps}; "
                "call descent_step() to finish the update"
            )
        u.ascents += 1
        if not u.params:
            return
        grads = self._grads(u)
        if u.scale is not None:
            torch._foreach_mul_(grads, u.scale)  # g̃ = T·g
        norm = global_norm(grads, u.dtype, self._reduce)
        u.finite.append(torch.isfinite(norm))
        u.grad_norms.append(norm)
        inv = (norm + EPS).reciprocal()
        if isinstance(u.rho, float):
            inv = inv * u.rho
        torch._foreach_mul_(grads, inv)
        if not isinstance(u.rho, float):
            torch._foreach_mul_(grads, u.rho)
        if u.scale is not None:
            torch._foreach_mul_(grads, u.scale)  # back to θ coordinates: δθ = T·δθ̃
        torch._foreach_add_(u.params, grads)
        for p in u.owners:
            p.grad = None

    @torch.no_grad()
    def descent_direction(self, loss_fn: Callable[[], Any] | None = None) -> bool:
        """Finish the update's math: put ``d`` in ``.grad`` and restore θ₀ exactly.

        Call after the backward at the last ascent point. ``loss_fn`` (no arguments, returns the
        loss on the same batch, forward only) is needed when XSAM's α search is due. Returns
        ``True`` if every pass was finite. If not, θ₀ is restored, ``.grad`` holds NaN (a
        GradScaler then skips the step and lowers its scale) and the base optimizer must not
        step — :meth:`descent_step` does all this for you."""
        u = self._update
        if u is None or u.ascents != self.steps:
            done = 0 if u is None else u.ascents
            raise RuntimeError(
                f"descent_direction() needs {self.steps} ascent_step() call(s) first, got {done}"
            )
        self._update = None
        if not u.params:
            return True
        grads = self._grads(u)
        ok = self._finite_so_far(u, grads)
        if ok:
            try:
                self._descent(u, grads, loss_fn)
                if self._dist.averages_direction and not self._direction_is_gk():
                    self._dist.average_(grads)  # local perturbation: mean of per-rank d_r
            except BaseException:
                torch._foreach_copy_(u.params, u.theta0)
                raise
        torch._foreach_copy_(u.params, u.theta0)
        if not ok:
            for g in grads:
                g.fill_(float("nan"))
        return ok

    def _finite_so_far(self, u: _Update, grads: list[Tensor]) -> bool:
        """One host sync per update: were the losses and every gradient finite?"""
        flags = list(u.finite) + [torch.isfinite(t) for t in u.losses]
        gk_sq = global_sq_sums([grads], u.dtype, self._reduce)[0]
        flags.append(torch.isfinite(gk_sq))
        ok = bool(self._dist.agree_all(torch.stack([f.to(gk_sq.device) for f in flags]).all()))
        self._last = {"g0_norm": u.grad_norms[0], "gk_norm": gk_sq.sqrt()}
        return ok

    @torch.no_grad()
    def descent_step(
        self,
        loss_fn: Callable[[], Any] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> bool:
        """:meth:`descent_direction`, then step the base optimizer (through ``scaler.step`` if a
        GradScaler is given; call ``scaler.update()`` yourself afterwards, as usual). Returns
        whether the update was applied; a skipped update leaves the weights and the optimizer
        state bit-identical."""
        ok = self.descent_direction(loss_fn)
        if scaler is not None:
            # d is finite exactly when every pass was; a skipped update hands the scaler NaN,
            # so it skips the base step too and lowers its scale at update().
            scaler.step(self.base_optimizer)
        elif ok:
            self.base_optimizer.step()
        self._finish(ok)
        return ok

    def _finish(self, ok: bool) -> None:
        if ok:
            self.updates += 1
            self._on_update_done()
        else:
            self.skipped_updates += 1
            if self._norm_snapshot is not None and self._closure_running:
                self._norm_snapshot.restore()
            if not self._warned_skip:
                self._warned_skip = True
                warnings.warn(
                    f"{type(self).__name__}: non-finite loss or gradient; update skipped and the "
                    "weights left unchanged (counted in .skipped_updates; warned once)",
                    RuntimeWarning,
                    stacklevel=3,
                )

    _closure_running = False

    # ------------------------------------------------------------------ the update, closure
    def _rho_all_zero(self) -> bool:
        return all(g["rho"] == 0.0 for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run one whole update. ``closure`` does forward + backward on the current batch and
        returns the loss; it is called ``steps + 1`` times (gradients zeroed before each call),
        plus forward-only probes when XSAM's α search is due. Returns the clean-pass loss."""
        if closure is None:
            raise RuntimeError(
                f"{type(self).__name__}.step() needs a closure that runs forward and backward "
                "(SAM-family updates evaluate the gradient at several points); for loops a "
                "closure cannot express use ascent_step() / descent_step()"
            )
        if self._update is not None:
            raise RuntimeError("step() called in the middle of an ascent_step() sequence")
        grad_closure = torch.enable_grad()(closure)
        snapshot = self._norm_snapshot
        if snapshot is not None:
            snapshot.save()
        self._closure_running = True
        try:
            self.zero_grad()
            if self._rho_all_zero():
                with self._dist.gradient_pass(synced=True):
                    loss = grad_closure()
                return self._plain_step(loss)
            with self.clean_pass():
                loss = grad_closure()
            u = self._update = self._begin()
            u.losses.append(_as_tensor(loss))
            for _ in range(self.steps):
                self.ascent_step()
                with self.perturbed_pass():
                    u.losses.append(_as_tensor(grad_closure()))
            loss_fn = self._probe_fn(closure) if self._needs_loss_fn() else None
            ok = self.descent_direction(loss_fn)
            if ok:
                self.base_optimizer.step()
            self._finish(ok)
            return loss
        except BaseException:
            if self._update is not None:  # an exception mid-update: put θ₀ back
                torch._foreach_copy_(self._update.params, self._update.theta0)
                self._update = None
            raise
        finally:
            self._closure_running = False

    def _plain_step(self, loss: Any) -> Any:
        """ρ = 0 everywhere: exactly the base optimizer (one pass, nothing perturbed)."""
        grads = [
            local_tensor(p.grad)
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        ok = True
        if grads:
            flags = torch.isfinite(global_sq_sums([grads], acc_dtype(grads), self._reduce)[0])
            lt = _as_tensor(loss)
            ok = bool(self._dist.agree_all(flags & torch.isfinite(lt).to(flags.device).all()))
        if ok:
            self.base_optimizer.step()
        self._finish(ok)
        return loss

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
                        return closure()
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

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state_dict (its state and the shared param groups, which hold
        ρ and friends) plus this wrapper's schedule under the key ``"sam_family"``."""
        sd = self.base_optimizer.state_dict()
        extra = {
            "type": type(self).__name__,
            "steps": self.steps,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
        }
        extra.update(self._state_extra())
        sd["sam_family"] = extra
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        extra = sd.pop("sam_family", None)
        if extra is None:
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
        self.base_optimizer.load_state_dict(sd)
        self.param_groups = self.base_optimizer.param_groups
        self.updates = int(extra["updates"])
        self.skipped_updates = int(extra["skipped_updates"])
        self._load_extra(extra)

    # ------------------------------------------------------------------ introspection
    @property
    def last_stats(self) -> dict[str, float]:
        """Scalars of the last update (floats; reading them synchronises with the device)."""
        return {k: (float(v) if isinstance(v, Tensor) else v) for k, v in self._last.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, base={self.base_optimizer!r})"


def _as_tensor(loss: Any) -> Tensor:
    if isinstance(loss, Tensor):
        return loss.detach()
    if loss is None:
        return torch.zeros(())
    return torch.as_tensor(float(loss))
