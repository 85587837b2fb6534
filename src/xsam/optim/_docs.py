"""Docstring fragments the SAM-family optimizers share, written once (as torch.optim builds
its optimizers' docstrings from shared fragments), and the one notation they use.

Notation (docs/algorithm.md): θ the parameters, θ₀ where the update starts, ``k = steps``,
``gᵢ = ∇L_B(θᵢ)`` the gradient on the batch ``B`` at the i-th point of the ascent, ρ its
path length, ``ε = 1e-12``, ``T = |θ₀| + η`` ASAM's elementwise scale, ``d`` the direction
the base optimizer steps with; norms and dot products are global over every parameter with a
gradient.

In a docstring passed to :func:`render`, a line holding only ``${name}`` becomes the fragment
``name``, indented like the placeholder.
"""

from __future__ import annotations

import re

FRAGMENTS: dict[str, str] = {
    "notation": """\
Notation: ``k = steps``; ``gᵢ = ∇L_B(θᵢ)``; ``ε = 1e-12``; norms and dot products are global
over every parameter with a gradient; ``T = |θ₀| + η`` (elementwise) with ``adaptive=True``.""",
    "ascent": """\
1. ascent: ``g₀ = ∇L_B(θ₀)``; ``θᵢ₊₁ = θᵢ + (ρ/k)·gᵢ/(‖gᵢ‖+ε)``, ``gᵢ₊₁ = ∇L_B(θᵢ₊₁)`` for
   ``i < k`` (``adaptive=True``: ``θᵢ₊₁ = θᵢ + (ρ/k)·T²gᵢ/(‖T gᵢ‖+ε)``);""",
    "params": """\
params: iterable of parameters or param-group dicts (groups may set ``rho``,
    ``adaptive``, ``eta``, and XSAM's ``rho_max``).""",
    "base_optimizer": """\
base_optimizer: the optimizer *class* to wrap, e.g. ``torch.optim.SGD``.""",
    "steps": """\
steps: number of ascent steps ``k`` (``>= 1``).""",
    "model": """\
model: the module being trained. When given, running statistics of its normalisation
    layers (BatchNorm, SyncBatchNorm, tracked InstanceNorm) change only in the clean
    pass (ascent points and α probes leave them untouched); without it every closure
    call updates them.""",
    "perturbation": """\
perturbation: with ``model=`` a ``DistributedDataParallel`` module: ``"local"``
    (default; each rank ascends from its own batch, as the SAM paper) or ``"global"``
    (every pass all-reduced: single-process training on the global batch). FSDP-sharded
    parameters imply ``"global"``. See :mod:`xsam.distributed`.""",
    "schedule": """\
schedule: which steps get the full update; the others are cheap steps of one pass
    (a :class:`xsam.PerturbationSchedule` or a dict of its fields; default: every
    step full). See :mod:`xsam.optim.schedule`.""",
    "base_kwargs": """\
base_kwargs: the base optimizer's settings as one mapping. Needed only when a setting
    of the base optimizer has the name of one of the wrapper's (``rho``, ``steps``,
    ``alpha``, ``eta``, ``model``, ...; e.g. ``RMSprop``'s ``alpha``): such a name is
    refused as a plain keyword, so that it can never silently reach the wrong optimizer.""",
    "kwargs": """\
**kwargs: the base optimizer's other settings (``lr``, ``momentum``, ``weight_decay``...).""",
    "ref_sam": """\
Foret, Kleiner, Mobahi, Neyshabur. Sharpness-Aware Minimization for Efficiently
Improving Generalization. ICLR 2021 (arXiv:2010.01412).""",
    "ref_asam": """\
Kwon, Kim, Park, Choi. ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
Learning of Deep Neural Networks. ICML 2021 (arXiv:2102.11600).""",
    "ref_xsam": """\
Chen, Zhou. Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
Implementation. ICLR 2026 (arXiv:2603.10048).""",
    "ref_looksam": """\
Liu, Mai, Chen, Hsieh, You. Towards Efficient and Scalable Sharpness-Aware
Minimization. CVPR 2022 (arXiv:2203.02714).""",
}

_PLACEHOLDER = re.compile(r"^([ \t]*)\$\{(\w+)\}[ \t]*$", re.MULTILINE)


def render(doc: str | None) -> str:
    """``doc`` with each line ``${name}`` replaced by ``FRAGMENTS[name]`` at its indentation
    (an unknown name raises ``KeyError``)."""

    def fill(match: re.Match[str]) -> str:
        indent, name = match.groups()
        return "\n".join(indent + line if line else line for line in FRAGMENTS[name].split("\n"))

    return _PLACEHOLDER.sub(fill, doc or "")
