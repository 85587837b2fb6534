"""SAM and k-step SAM (Foret et al., 2021), with ASAM's adaptive perturbation as an option."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from ._args import FAMILY_ARGS, family_args
from ._core import SAMFamily
from ._docs import render
from ._update import _Update
from .schedule import PerturbationSchedule

__all__ = ["SAM"]

_SAM_KEYWORDS = frozenset(FAMILY_ARGS) - {"base_kwargs"}


class SAM(SAMFamily):
    """Sharpness-Aware Minimization wrapping any torch optimizer.

    One update on the batch ``B``:

    ${ascent}
    2. θ ← θ₀ exactly (from a copy, not by subtraction), gradient ``d = g_k``, base optimizer
       step.

    ${notation}

    Cost: ``k + 1`` forward/backward passes; memory: one parameter-sized buffer (θ₀).

    Args:
        ${params}
        ${base_optimizer}
        rho: total ascent path length ρ (``>= 0``). ``rho=0`` is the base optimizer alone,
            bit for bit (one closure call per step).
        ${steps}
        adaptive: use ASAM's scale-invariant perturbation (Kwon et al., 2021, eq. 10-11): with
            ``T = |θ₀| + η`` elementwise, each ascent step is ``(ρ/k)·T²g/(‖T g‖+ε)``. Because
            ``|θ|`` is usually far below 1, the displacement for a given ρ is much smaller than
            SAM's: ASAM papers use ρ about 10× SAM's (e.g. 0.5–2.0 against 0.05).
            davda54/sam's ``adaptive=True`` is this rule with ``η = 0``.
        eta: η of the adaptive rule (``>= 0``; default 0.01, Kwon et al.'s value).
        ${model}
        ${perturbation}
        ${schedule}
        ${base_kwargs}
        ${kwargs}

    Example:
        >>> opt = xsam.SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, model=model)
        >>> def closure():
        ...     loss = F.cross_entropy(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)

    Departures from davda54/sam: the closure is called for every pass and ``step`` returns the
    clean loss; θ₀ is restored exactly; the normalisation has ``ε = 1e-12`` inside the
    denominator so a zero gradient gives a zero step, not NaN; a non-finite pass skips the
    update; ``state_dict`` includes the base optimizer's state.

    References:
        ${ref_sam}
        ${ref_asam}
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.05,
        steps: int = 1,
        adaptive: bool = False,
        eta: float = 0.01,
        model: nn.Module | None = None,
        perturbation: str | None = None,
        schedule: PerturbationSchedule | Mapping[str, Any] | None = None,
        base_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            base_optimizer,
            rho_max=None,
            own_keywords=_SAM_KEYWORDS,
            **family_args(locals()),
            **kwargs,
        )

    def _descent(self, u: _Update, grads: list[Tensor], loss_fn: Callable[[], Any] | None) -> bool:
        # d = g_k: the gradient already in .grad is the update direction.
        return True


SAM.__doc__ = render(SAM.__doc__)
