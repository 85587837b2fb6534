"""Section 3: memory the optimizer keeps beyond the base optimizer, and one update's peak."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile, record_function

from .config import FIXED_ALPHA, MEMORY_OPTIMIZERS, TARGET_EXTRA_BUFFERS
from .measure import state_tensors, storage_bytes, sync
from .opt_only import OptOnly, make_grads, param_set


def alloc_trace(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak, net) bytes allocated on the CPU by the second of two calls of ``fn``, from the
    profiler's allocation events (peak relative to the level at its start, never below 0).

    The first call runs under the profiler too, so that blocks it allocates and the second
    call frees are seen being freed (the profiler cannot size blocks allocated before it
    started)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        with record_function("measured_update"):
            fn()
    events = list(prof.profiler.kineto_results.events())
    mark = next(e for e in events if e.name() == "measured_update")
    t0, t1 = mark.start_ns(), mark.end_ns()
    allocs = sorted(
        (e.start_ns(), i, e.nbytes())
        for i, e in enumerate(events)
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    level = 0
    start_level = peak = None
    for t, _, nbytes in allocs:
        if t >= t0 and start_level is None:
            start_level = peak = level
        if t > t1:
            break
        level += nbytes
        if start_level is not None:
            peak = max(peak, level)
    if start_level is None:  # nothing allocated in the measured call
        return 0, 0
    return max(0, peak - start_level), level - start_level


def cuda_transient(run: OptOnly, device: torch.device) -> tuple[int, int, int]:
    """(steady, peak, net) on CUDA: bytes allocated before one more update, and that update's
    peak and net allocation beyond them."""
    steady = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run.iteration(device, timer=False)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - steady
    net = torch.cuda.memory_allocated(device) - steady
    return steady, peak, net


def memory_row(
    impl: str, base: list[Tensor], grads: list[list[Tensor]], device: torch.device
) -> dict[str, Any]:
    """One optimizer's kept state and transient peak; its tensors are freed on return."""
    param_bytes = storage_bytes(base)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        before_opt = torch.cuda.memory_allocated(device)
    run = OptOnly(impl, base, grads, 1, FIXED_ALPHA)
    if cuda:
        created = torch.cuda.memory_allocated(device)  # params + grad buffers
    for _ in range(2):  # allocate every buffer the optimizer keeps
        run.iteration(device, timer=False)
    sync(device)
    base_opt = run.opt if impl == "sgd" else run.opt.base_optimizer
    base_state = storage_bytes(state_tensors(base_opt.state))
    extra = 0 if impl == "sgd" else storage_bytes(state_tensors(run.opt.state))
    row: dict[str, Any] = {
        "optimizer": impl,
        "base_state_bytes": base_state,
        "extra_state_bytes": extra,
        "extra_over_params": extra / param_bytes,
        "base_state_over_params": base_state / param_bytes,
    }
    if cuda:
        steady, peak, net = cuda_transient(run, device)
        row["cuda_steady_growth_bytes"] = steady - created  # base state + extra
        row["cuda_extra_minus_base_state_bytes"] = steady - created - base_state
        row["cuda_params_and_grads_bytes"] = created - before_opt
    else:
        peak, net = alloc_trace(lambda: run.iteration(device, timer=False))
    row["transient_peak_bytes"] = peak
    row["transient_peak_over_params"] = peak / param_bytes
    row["net_bytes_per_update"] = net
    row["met"] = impl == "sgd" or extra / param_bytes <= TARGET_EXTRA_BUFFERS + 1e-9
    return row


def bench_memory(name: str, in_ch: int, device: torch.device, seed: int) -> dict[str, Any]:
    """Memory of every optimizer in ``MEMORY_OPTIMIZERS`` on the parameter list of ``name``."""
    base = param_set(name, in_ch, device, seed)
    grads = make_grads(base, 1, seed)
    return {
        "param_set": name,
        "n_tensors": len(base),
        "param_bytes": storage_bytes(base),
        "transient_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler CPU allocation events (profile_memory=True)",
        "rows": [memory_row(impl, base, grads, device) for impl in MEMORY_OPTIMIZERS],
    }
