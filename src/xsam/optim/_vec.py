"""Flat-vector arithmetic over lists of tensors.

The SAM family treats every parameter that has a gradient as one flat vector: its norms and
dot products are global. These helpers do that with ``torch._foreach_*`` kernels (one launch per
op for the whole list), accumulate in float32 or wider, and never synchronise with the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "acc_dtype",
    "add_scaled_",
    "global_dots",
    "global_norm",
    "global_sq_sums",
    "precise_sq_sums",
    "scale_",
    "ReduceFn",
]

# A hook that turns a local sum into a global one (distributed training shards or replicates
# the vector). It receives and returns a 1-D float tensor of partial sums.
ReduceFn = Callable[[Tensor], Tensor]


def acc_dtype(tensors: list[Tensor]) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (half precision never accumulates)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def global_sq_sums(
    lists: list[list[Tensor]], dtype: torch.dtype, reduce: ReduceFn | None = None
) -> Tensor:
    """Squared 2-norms of several tensor lists, each as one flat vector, in one 1-D tensor.

    Reducing all of them together costs one collective instead of one per list."""
    parts = []
    for tensors in lists:
        if tensors:
            norms = torch._foreach_norm(tensors, 2, dtype=dtype)
            parts.append(torch.stack(norms).square().sum())
        else:
            parts.append(torch.zeros((), dtype=dtype))
    out = torch.stack(parts)
    if reduce is not None:
        out = reduce(out)
    return out


def global_norm(
    tensors: list[Tensor], dtype: torch.dtype, reduce: ReduceFn | None = None
) -> Tensor:
    """The 2-norm of the concatenation of ``tensors`` (a 0-d tensor)."""
    return global_sq_sums([tensors], dtype, reduce)[0].sqrt()


def global_dots(
    a: list[Tensor], b: list[Tensor], dtype: torch.dtype, reduce: ReduceFn | None = None
) -> Tensor:
    """``⟨a, b⟩`` of two tensor lists, each taken as one flat vector (a 0-d tensor)."""
    if not a:
        return torch.zeros((), dtype=dtype)
    parts = [torch.sum(x.to(dtype) * y.to(dtype)) for x, y in zip(a, b, strict=True)]
    out = torch.stack(parts).sum().reshape(1)
    if reduce is not None:
        out = reduce(out)
    return out[0]


# ---------------------------------------------------------------------- precise sums, axpy
# A float32 norm kernel accumulates a tensor's squares in a few float32 lanes, so its relative
# error grows with the length (about 5e-5 on a 2.4M-element ResNet-18 tensor). XSAM's angle is
# taken from sums of squares (see xsam.py), which needs them far more precise than that: large
# tensors are reduced as rows of _ROW elements (each row's norm is short, hence precise) and
# the row norms are squared and added in float64 (relative error about 1e-8). Same passes
# over memory as a plain norm.
_ROW = 4096


def _row_norms(t: Tensor, dtype: torch.dtype, out: list[Tensor], rest: list[Tensor]) -> None:
    """Row norms of a large contiguous ``t`` into ``out``; its tail (or all of a small or
    non-contiguous ``t``) into ``rest``."""
    n = t.numel()
    if n < 4 * _ROW or not t.is_contiguous():
        rest.append(t)
        return
    flat = t.view(-1)
    m = n // _ROW
    out.append(torch.linalg.vector_norm(flat[: m * _ROW].view(m, _ROW), dim=1, dtype=dtype))
    if m * _ROW < n:
        rest.append(flat[m * _ROW :])


def precise_sq_sums(
    lists: list[list[Tensor]], dtype: torch.dtype, reduce: ReduceFn | None = None
) -> Tensor:
    """Like :func:`global_sq_sums`, but each sum is float64 and accurate to about 1e-8 relative
    whatever the tensor sizes (``dtype``: the accumulation type of the row norms)."""
    parts = []
    for tensors in lists:
        rows: list[Tensor] = []
        rest: list[Tensor] = []
        for t in tensors:
            _row_norms(t, dtype, rows, rest)
        if rest:
            rows.append(torch.stack(torch._foreach_norm(rest, 2, dtype=dtype)))
        if rows:
            parts.append(torch.cat(rows).to(torch.float64).square().sum())
        else:
            parts.append(torch.zeros((), dtype=torch.float64))
    out = torch.stack(parts)
    if reduce is not None:
        out = reduce(out)
    return out


def add_scaled_(ys: list[Tensor], xs: list[Tensor], coef: Tensor | float) -> None:
    """``ys += coef·xs`` over two tensor lists, ``xs`` left unchanged; ``coef`` a number or a
    0-d tensor. On CPU one pass (a tensor coefficient is read to the host, which costs nothing
    there); on an accelerator two foreach kernels and no host synchronisation."""
    if not ys:
        return
    if isinstance(coef, Tensor) and ys[0].device.type == "cpu":
        coef = float(coef)
    if isinstance(coef, Tensor):
        torch._foreach_add_(ys, torch._foreach_mul(xs, coef.to(xs[0].dtype)))
    elif abs(coef) > min(torch.finfo(y.dtype).max for y in ys):
        # an ``alpha`` beyond float16's range is refused by torch (ρ/‖g‖ for a vanishing g);
        # a scalar multiply forms coef·x in float32 and rounds once
        torch._foreach_add_(ys, torch._foreach_mul(xs, coef))
    else:
        torch._foreach_add_(ys, xs, alpha=coef)


def scale_(tensors: list[Tensor], coef: float) -> None:
    """``tensors *= coef`` in place, also when ``coef`` lies beyond a half-precision dtype's
    range and the products do not (``1/‖g‖`` for a vanishing float16 ``g``): torch's in-place
    multiply by a Python number rounds the number to the tensors' dtype first (``0·inf``)."""
    if tensors and abs(coef) > min(torch.finfo(t.dtype).max for t in tensors):
        torch._foreach_copy_(tensors, torch._foreach_mul(tensors, coef))
    else:
        torch._foreach_mul_(tensors, coef)
