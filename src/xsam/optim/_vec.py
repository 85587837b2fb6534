"""Flat-vector arithmetic over lists of tensors.

The SAM family treats every parameter that has a gradient as one flat vector: its norms and
dot products are global. These helpers do that with ``torch._foreach_*`` kernels (one launch per
op for the whole list), accumulate in float32 or wider, and never synchronise with the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["acc_dtype", "global_dots", "global_norm", "global_sq_sums", "ReduceFn"]

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
