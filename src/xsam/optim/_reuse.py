"""LookSAM's reuse (``PerturbationSchedule(reuse=λ)``): the vector a full update leaves for
the cheap steps after it — made (:meth:`~LookSAMReuse._store_reuse`), applied on a cheap step
(:meth:`~LookSAMReuse._apply_reuse`), dropped, and carried in a state_dict's per-parameter
state under ``"sam_reuse"`` (packed, unpacked and loaded). The math is in ``_kernels``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..distributed import local_tensor
from ._kernels import add_reuse_, orthogonal_unit_
from ._update import _Update, param_buffers
from ._vec import global_norm, global_sq_sums

REUSE_KEY = "sam_reuse"


class LookSAMReuse:
    """The reuse part of :class:`~xsam.optim._core.SAMFamily` (a mixin: it reads the
    optimizer's ``state``, ``schedule``, groups and distribution). ``_reuse_valid``: the
    reuse buffers hold the last full update's vector."""

    _reuse_valid = False

    def _reuse_buffers(self, u: _Update) -> list[Tensor]:
        bufs = param_buffers(self.state, u.owners, u.params, REUSE_KEY)
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
                self.state[p].pop(REUSE_KEY, None)
        return False

    def _store_reuse(self, u: _Update) -> bool:
        """LookSAM's reused vector: the unit part of d orthogonal to g₀, in g₀'s buffers.
        Under DDP with local perturbation each rank's part is averaged (d is already the
        average, g₀ is the rank's own), and so is the displacement's rounding (in the same
        all-reduce), so every replica keeps the same vector.

        No vector when that part is rounding noise: when d is g₀'s direction in exact
        arithmetic (``u.parallel``), and when its norm is below ``REUSE_NOISE``·ε·(‖d‖ + the
        displacement's rounding in d, :meth:`_displacement_rounding`) (ε of the parameters'
        widest-rounding dtype), where the buffers are set to zero."""
        if u.parallel:
            return self._drop_reuse()
        g0, d = u.g0, [local_tensor(p.grad) for p in u.owners]
        assert g0 is not None
        average, carried = None, self._displacement_rounding(u)
        if self._dist.averages_direction:  # each rank's d carried its own displacement's
            carried = torch.as_tensor(carried, dtype=u.dtype, device=g0[0].device).clone()
            average = lambda t: self._dist.average_([*t, carried], [*u.ever, True])  # noqa: E731
        orthogonal_unit_(g0, d, u.dtype, self._reduce, average, carried)
        owned = {id(o) for o in u.owners}
        for p in self._group_params():
            if id(p) not in owned and p in self.state:
                self.state[p].pop(REUSE_KEY, None)  # not part of the last full update
        return True

    def _displacement_rounding(self, u: _Update) -> Tensor | float:
        """The rounding (in units of ε) that d carries from the displacement δ = θ_k − θ₀
        when d is formed from it (XSAM): k steps round θ by up to ε·|θ₀| each, so
        ``k·|c|·‖θ₀‖`` (``‖θ₀/T²‖`` under ASAM), c = ``u.displacement_coef``, over the
        parameters that moved (ρ > 0). Zero when d does not use δ (SAM: d = g_k)."""
        if u.displacement_coef == 0.0:
            return 0.0
        rhos = u.rho if isinstance(u.rho, list) else [u.rho] * len(u.theta0)
        moved = [i for i, r in enumerate(rhos) if r != 0.0]
        if not moved:
            return 0.0
        theta0 = [u.theta0[i] for i in moved]
        if u.scale is not None:
            scale = [u.scale[i] for i in moved]
            theta0 = torch._foreach_div(torch._foreach_div(theta0, scale), scale)
        return global_norm(theta0, u.dtype, self._reduce) * (u.ascents * u.displacement_coef)

    def _apply_reuse(self, owners: list[Tensor], grads: list[Tensor], sq: Tensor) -> Tensor:
        """A cheap step's gradient: g + λ·‖g‖·v (v = 0 for parameters outside it), rounded
        once into ``.grad`` (:func:`~xsam.optim._kernels.add_reuse_`). Returns the sum of
        squares of the gradients the base optimizer now receives (non-finite where that
        rounding overflowed). No host synchronisation."""
        pairs = [
            (g, self.state[p][REUSE_KEY])
            for p, g in zip(owners, grads)
            if p in self.state and REUSE_KEY in self.state[p]
        ]
        if pairs:
            gs, vs = (list(t) for t in zip(*pairs))
            add_reuse_(gs, vs, self.schedule.reuse, sq)
        return global_sq_sums([grads], sq.dtype, self._reduce)[0]

    # ------------------------------------------------------------------ in a state_dict
    def _pack_reuse(self, sd: dict[str, Any]) -> None:
        """The schedule's reuse vectors travel in the per-parameter state (key
        ``"sam_reuse"``), where checkpoint tools that reshard state keep them."""
        if self.schedule.reuse == 0.0:
            return
        state = dict(sd["state"])
        for p, key in self._param_index(sd["param_groups"]):
            if not p.requires_grad:
                continue
            buf = self.state[p].get(REUSE_KEY) if p in self.state else None
            if buf is None:  # zeros mean "no reused component" and give the entry a shape, so
                buf = torch.zeros_like(local_tensor(p.detach()))  # DCP's templates have it
            state[key] = {**state.get(key, {}), REUSE_KEY: buf}
        sd["state"] = state

    @staticmethod
    def _unpack_reuse(sd: dict[str, Any]) -> dict[Any, Tensor]:
        """Take the reuse vectors out of ``sd``'s per-parameter state (by state key)."""
        state, found = {}, {}
        for key, entry in sd.get("state", {}).items():
            entry = dict(entry)
            if REUSE_KEY in entry:
                found[key] = entry.pop(REUSE_KEY)
            if entry:
                state[key] = entry
        sd["state"] = state
        return found

    def _load_reuse(self, groups: list[dict[str, Any]], reuse: dict[Any, Tensor]) -> None:
        """Put unpacked reuse vectors back (after the base optimizer loaded its state)."""
        for p, key in self._param_index(groups):
            if p in self.state:
                self.state[p].pop(REUSE_KEY, None)
            if key in reuse:
                self.state[p][REUSE_KEY] = reuse[key].to(p.device, p.dtype, copy=True)
