"""Saving and restoring a SAM-family optimizer: ``state_dict`` / ``load_state_dict`` (the base
optimizer's state plus the wrapper's entry ``"sam_family"``) and copying / pickling.

The ``"sam_family"`` entry holds the counters (:class:`~xsam.optim._update.Counters`, under
their own names), ``type``, ``steps``, the schedule, ``reuse_valid`` and a variant's own
fields (``_state_extra``); its keys are a file format: old checkpoints must keep loading.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor

from ._update import Counters
from .schedule import PerturbationSchedule

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)
_COUNTER_NAMES = tuple(Counters.__dataclass_fields__)


class StateDictMixin:
    """state_dict, load_state_dict, copy and pickle of :class:`~xsam.optim._core.SAMFamily`
    (a mixin). A variant adds its own fields through ``_state_extra`` (saved),
    ``_check_extra`` (refuse before anything is loaded) and ``_load_extra``."""

    # ------------------------------------------------------------------ a variant's fields
    def _state_extra(self) -> dict[str, Any]:
        return {}

    def _check_extra(self, extra: dict[str, Any]) -> None:
        pass

    def _load_extra(self, extra: dict[str, Any]) -> None:
        pass

    def _migrate_pickle(self, state: dict[str, Any]) -> None:
        """Turn a variant's attributes pickled by an older version into today's, in place."""

    # ------------------------------------------------------------------ state_dict
    def _schedule_state(self) -> dict[str, Any]:
        c = self._counters
        extra = {
            "type": type(self).__name__,
            "steps": self.steps,
            "updates": c.updates,
            "skipped_updates": c.skipped_updates,
            "step_index": c.step_index,
            "cheap_updates": c.cheap_updates,
            "schedule": self.schedule.to_dict(),
            "reuse_valid": self._reuse_valid,
        }
        extra.update(self._state_extra())
        return extra

    def _param_index(self, groups: list[dict[str, Any]]) -> list[tuple[Tensor, Any]]:
        """(parameter, its key in a state_dict's "state") in the order torch numbers them."""
        keys = [k for g in groups for k in g["params"]]
        return list(zip(self._group_params(), keys))

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
        self._counters = Counters.from_dict(extra)
        self._reuse_valid = bool(extra.get("reuse_valid", False))
        self._load_reuse(sd["param_groups"], reuse)
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
        if "_counters" not in state:  # pickled before the counters were one object
            saved = {k: state.pop(k) for k in _COUNTER_NAMES if k in state}
            state["_counters"] = Counters.from_dict(saved)
        self._migrate_pickle(state)
        super().__setstate__(state)
        params = self._group_params()
        self._left = {}
        for i in left if isinstance(left, list) else []:
            if i < len(params) and params[i].grad is not None:
                g = params[i].grad
                self._left[id(params[i])] = (weakref.ref(g), g._version)
