"""Flat-vector views of a model's weights, and a sandbox for analysis passes.

The analysis tools treat every parameter with ``requires_grad=True`` as one flat vector, as the
optimizers do (docs/algorithm.md §3: norms and dot products are global). Vectors are held in float64
when any parameter is float64 and in float32 otherwise; writing a vector into the weights
rounds it to each parameter's own dtype.

:class:`FlatModel` is the sandbox every tool runs in: inside it the model is in train mode with
normalisation running statistics frozen (:func:`xsam.frozen_norm_stats`), every loss evaluation
draws the same random numbers (so dropout masks, if any, are the same at every point: the loss
is a deterministic function of the weights), the global RNG state is left as it was, and on
exit the weights, the train/eval flags and the ``.grad`` fields are exactly as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from ..norm_stats import frozen_norm_stats

__all__ = [
    "EPS",
    "LossFn",
    "FlatModel",
    "trainable_parameters",
    "flat_dtype",
    "get_flat",
    "set_flat_",
    "add_flat_",
    "flatten_tensors",
    "unit",
    "cosine",
]

EPS = 1e-12
"""The ε of docs/algorithm.md §3, added to norms before dividing."""

LossFn = Callable[[nn.Module], Tensor]
"""``loss_fn(model) -> scalar loss tensor`` on a fixed batch (or a fixed subset)."""


def trainable_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters of ``model`` with ``requires_grad=True``, in ``model.parameters()`` order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameter with requires_grad=True: nothing to analyse")
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"the analysis tools need every parameter on one device, got {sorted(map(str, devices))}"
        )
    for p in params:
        if not p.is_floating_point():
            raise ValueError(f"parameters must be real floating point, got dtype {p.dtype}")
    return params


def flat_dtype(params: Sequence[Tensor]) -> torch.dtype:
    """float64 if any parameter is float64, else float32 (half precision is never used)."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def flatten_tensors(
    tensors: Sequence[Tensor | None], like: Sequence[Tensor], dtype: torch.dtype | None = None
) -> Tensor:
    """Concatenate ``tensors`` into one flat vector; a ``None`` entry counts as zeros shaped like
    the matching entry of ``like``."""
    dtype = dtype or flat_dtype(like)
    parts = []
    for t, ref in zip(tensors, like, strict=True):
        if t is None:
            parts.append(torch.zeros(ref.numel(), dtype=dtype, device=ref.device))
        else:
            parts.append(t.detach().reshape(-1).to(dtype))
    return torch.cat(parts)


def get_flat(params: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """A flat copy of the values of ``params`` (in :func:`flat_dtype` unless ``dtype`` given)."""
    return flatten_tensors(list(params), params, dtype)


def _check_numel(params: Sequence[Tensor], vec: Tensor) -> None:
    n = sum(p.numel() for p in params)
    if vec.dim() != 1 or vec.numel() != n:
        raise ValueError(
            f"flat vector must be 1-D with {n} elements (the parameters' total), "
            f"got shape {tuple(vec.shape)}"
        )


@torch.no_grad()
def set_flat_(params: Sequence[Tensor], vec: Tensor) -> None:
    """Write the flat vector ``vec`` into ``params`` (rounded to each parameter's dtype)."""
    _check_numel(params, vec)
    for p, chunk in zip(params, vec.split([p.numel() for p in params]), strict=True):
        p.copy_(chunk.view_as(p))


@torch.no_grad()
def add_flat_(params: Sequence[Tensor], vec: Tensor, alpha: float = 1.0) -> None:
    """``params += alpha·vec`` with ``vec`` flat."""
    _check_numel(params, vec)
    for p, chunk in zip(params, vec.split([p.numel() for p in params]), strict=True):
        p.add_(chunk.view_as(p).to(p.dtype), alpha=alpha)


def unit(vec: Tensor) -> Tensor:
    """``vec/(‖vec‖+ε)`` (the zero vector stays zero)."""
    return vec / (vec.norm() + EPS)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of the angle between two flat vectors; 0 when either is zero."""
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 0.0
    return max(-1.0, min(1.0, float(a @ b) / (na * nb)))


def _as_scalar(out: Any) -> Tensor:
    if not isinstance(out, Tensor):
        raise TypeError(
            f"loss_fn(model) must return a scalar torch.Tensor, got {type(out).__name__}"
        )
    if out.numel() != 1:
        raise ValueError(f"loss_fn(model) must return a scalar, got shape {tuple(out.shape)}")
    return out.reshape(())


class FlatModel:
    """A model's trainable weights as one flat vector, inside an analysis sandbox.

    Use as a context manager::

        with FlatModel(model, seed=0) as fm:
            loss, g0 = fm.loss_and_grad(loss_fn)            # at θ₀
            worse = fm.loss(loss_fn, fm.theta0 + 0.1 * unit(g0))

    Inside: the model is in train mode with normalisation running statistics frozen; each loss
    evaluation runs with the CPU (and the model's CUDA device's) generator seeded with ``seed``,
    so stochastic layers draw the same numbers at every point; gradients are taken with
    ``torch.autograd.grad``, so no ``.grad`` field is touched. On exit the weights are restored
    bit for bit, the train/eval flags of every module are put back and the global RNG state is
    as it was on entry.

    Attributes (valid inside the ``with`` block):
        params: the trainable parameters.
        dtype: the dtype of flat vectors.
        theta0: the flat weights at entry (θ₀).
    """

    def __init__(self, model: nn.Module, *, seed: int = 0) -> None:
        self.model = model
        self._read_model()
        self.seed = int(seed)
        self.evaluations = 0  # forward passes run
        self.gradients = 0  # backward passes run
        self._stack: contextlib.ExitStack | None = None
        self._saved: list[Tensor] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        self.theta0 = torch.empty(0)

    # ------------------------------------------------------------------ sandbox
    def __enter__(self) -> FlatModel:
        if self._stack is not None:
            raise RuntimeError("FlatModel is not re-entrant; open a new one")
        self._read_model()  # the model as it is now (it may have been moved or converted)
        self._saved = [p.detach().clone() for p in self.params]
        self._modes = [(m, m.training) for m in self.model.modules()]
        self.theta0 = get_flat(self.params, self.dtype)
        stack = contextlib.ExitStack()
        try:
            self.model.train()
            stack.enter_context(frozen_norm_stats(self.model))
        except BaseException:
            stack.close()
            self._restore()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                stack.close()
        finally:
            self._restore()

    def _read_model(self) -> None:
        self.params = trainable_parameters(self.model)
        self.dtype = flat_dtype(self.params)
        self.device = self.params[0].device
        self.numel = sum(p.numel() for p in self.params)

    def _restore(self) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, self._saved, strict=True):
                p.copy_(saved)
        for m, mode in self._modes:
            m.training = mode
        self._saved, self._modes = [], []

    @contextlib.contextmanager
    def _fixed_rng(self) -> Iterator[None]:
        if self.device.type != "cuda":
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(self.seed)
                yield
            return
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index]):
            torch.random.default_generator.manual_seed(self.seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(self.seed)
            yield

    def _require_open(self) -> None:
        if self._stack is None:
            raise RuntimeError("use FlatModel as a context manager: `with FlatModel(model) as fm:`")

    # ------------------------------------------------------------------ weights
    def set(self, point: Tensor) -> None:
        """Move the weights to the flat point ``point`` (absolute weights, not an offset)."""
        self._require_open()
        set_flat_(self.params, point)

    def flatten(self, tensors: Sequence[Tensor | None]) -> Tensor:
        """Flatten per-parameter tensors (``None`` = zeros) into one vector of :attr:`dtype`."""
        return flatten_tensors(tensors, self.params, self.dtype)

    def random_unit(self, generator: torch.Generator) -> Tensor:
        """A uniformly random unit vector (Gaussian, normalised), drawn on the CPU from
        ``generator`` so that it does not depend on the device."""
        v = torch.randn(self.numel, generator=generator, dtype=torch.float64)
        return unit(v).to(self.device, self.dtype)

    # ------------------------------------------------------------------ evaluations
    def loss(self, loss_fn: LossFn, point: Tensor | None = None) -> float:
        """``L(point)`` without gradients (``point=None``: the current weights)."""
        self._require_open()
        if point is not None:
            self.set(point)
        with torch.no_grad(), self._fixed_rng():
            out = _as_scalar(loss_fn(self.model))
        self.evaluations += 1
        return float(out)

    def loss_graph(self, loss_fn: LossFn, point: Tensor | None = None) -> Tensor:
        """``L(point)`` as a tensor with its autograd graph (for :meth:`grad_of`)."""
        self._require_open()
        if point is not None:
            self.set(point)
        with torch.enable_grad(), self._fixed_rng():
            out = _as_scalar(loss_fn(self.model))
        self.evaluations += 1
        if not out.requires_grad:
            raise RuntimeError(
                "loss_fn(model) returned a loss that does not require grad; compute it from the "
                "model's parameters with gradients enabled (no torch.no_grad() inside loss_fn)"
            )
        return out

    def grad_of(self, loss: Tensor) -> Tensor:
        """The flat gradient of a loss returned by :meth:`loss_graph`."""
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.gradients += 1
        return self.flatten(grads)

    def loss_and_grad(self, loss_fn: LossFn, point: Tensor | None = None) -> tuple[float, Tensor]:
        """``(L(point), ∇L(point))`` with the gradient flat (``point=None``: current weights)."""
        out = self.loss_graph(loss_fn, point)
        return float(out.detach()), self.grad_of(out)
