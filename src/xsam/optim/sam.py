"""SAM and k-step SAM (Foret et al., 2021), with ASAM's adaptive perturbation as an option."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from ._core import SAMFamily
from ._update import _Update
from .schedule import PerturbationSchedule

__all__ = ["SAM"]

_SAM_KEYWORDS = frozenset({"rho", "steps", "adaptive", "eta", "model", "perturbation", "schedule"})


class SAM(SAMFamily):
    r"""Sharpness-Aware Minimization wrapping any torch optimizer.

    One update on the batch ``B`` (``k = steps``; norms global over all parameters):

    .. math::
        g_0 = \nabla L_B(\theta_0),\quad
        \theta_{i+1} = \theta_i + \tfrac{\rho}{k}\,\frac{g_i}{\lVert g_i\rVert + \epsilon},\quad
        g_{i+1} = \nabla L_B(\theta_{i+1}),

    then θ is restored to θ₀ *exactly* (from a copy, not by subtraction) and the base optimizer
    steps with ``g_k`` as the gradient. Cost: ``k + 1`` forward/backward passes; memory: one
    parameter-sized buffer (θ₀).

    Args:
        params: iterable of parameters or param-group dicts (groups may set ``rho``,
            ``adaptive``, ``eta``).
        base_optimizer: the optimizer *class* to wrap, e.g. ``torch.optim.SGD``.
        rho: total ascent path length ρ (``>= 0``). ``rho=0`` is the base optimizer alone,
            bit for bit (one closure call per step).
        steps: number of ascent steps ``k`` (``>= 1``).
        adaptive: use ASAM's scale-invariant perturbation (Kwon et al., 2021, *ASAM*, eq. 10-11):
            with ``T = |θ₀| + η`` elementwise, each ascent step is
            ``(ρ/k)·T²g/‖T g‖``. Because ``|θ|`` is usually far below 1, the displacement for a
            given ρ is much smaller than SAM's: ASAM papers use ρ about 10× SAM's (e.g. 0.5–2.0
            against 0.05). davda54/sam's ``adaptive=True`` is this rule with ``η = 0``.
        eta: η of the adaptive rule (default 0.01, Kwon et al.'s value).
        model: the module being trained. When given, running statistics of its normalisation
            layers (BatchNorm, SyncBatchNorm, tracked InstanceNorm) change only in the clean
            pass; without it every closure call updates them.
        perturbation: with ``model=`` a ``DistributedDataParallel`` module: ``"local"``
            (default; each rank ascends from its own batch, as the SAM paper) or ``"global"``
            (every pass all-reduced: single-process training on the global batch). FSDP-sharded
            parameters imply ``"global"``. See :mod:`xsam.distributed`.
        schedule: which steps get the full update; the others are cheap steps of one pass
            (a :class:`xsam.PerturbationSchedule` or a dict of its fields; default: every
            step full). See :mod:`xsam.optim.schedule`.
        base_kwargs: the base optimizer's settings as one mapping. Needed only when a setting
            of the base optimizer has the name of one of the wrapper's (``rho``, ``steps``,
            ``alpha``, ``eta``, ``model``, ...): such a name is refused as a plain keyword,
            so that it can never silently reach the wrong optimizer.
        **kwargs: the base optimizer's other settings (``lr``, ``momentum``, ``weight_decay``...).

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
        Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization for Efficiently
        Improving Generalization. ICLR 2021.
        Kwon, Kim, Park, Choi. ASAM: Adaptive Sharpness-Aware Minimization for
        Scale-Invariant Learning of Deep Neural Networks. ICML 2021.
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
            rho=rho,
            steps=steps,
            adaptive=adaptive,
            eta=eta,
            rho_max=None,
            model=model,
            perturbation=perturbation,
            schedule=schedule,
            base_kwargs=base_kwargs,
            own_keywords=_SAM_KEYWORDS,
            **kwargs,
        )

    def _descent(self, u: _Update, grads: list[Tensor], loss_fn: Callable[[], Any] | None) -> bool:
        # d = g_k: the gradient already in .grad is the update direction.
        return True
