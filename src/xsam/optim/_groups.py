"""The param groups a SAM-family optimizer shares with its base optimizer: the wrapper's keys
(``rho``, ``rho_max``, ``adaptive``, ``eta``) filled in and checked in every group, at
construction, in ``add_param_group`` and at every update (values a scheduler or a user set
later are checked like the constructor's); which of the groups' parameters an update covers,
and the gradients of those it does not."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._args import GROUP_KEYS, check_group, check_params
from ._update import _Update


class ParamGroups:
    """Param-group handling of :class:`~xsam.optim._core.SAMFamily` (a mixin)."""

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

    def _rho_all_zero(self) -> bool:
        return all(g["rho"] == 0.0 for g in self.param_groups)

    def _group_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _clear_grads(self) -> None:
        for p in self._group_params():
            p.grad = None

    def _owners(self) -> list[Tensor]:
        """The parameters this update covers. One process: those with a gradient after the
        clean pass. DDP: every parameter that requires a gradient, in group order, so the
        list (and the buffers reduced over it) is the same on every rank even when ranks use
        different parameters; a parameter without a gradient on a rank counts as zero there."""
        if self._dist.kind == "ddp":
            return [p for p in self._group_params() if p.requires_grad]
        return [p for p in self._group_params() if p.grad is not None]

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
