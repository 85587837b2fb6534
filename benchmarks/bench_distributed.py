"""Throughput of 1 vs 2 processes (gloo, CPU) for SAM and XSAM under DDP, and the gradient
communication per update in each perturbation mode.

The global batch is fixed (default 128); with 2 processes each rank gets half. Every variant
runs in the same spawned processes, interleaved round by round, so machine noise hits all of
them alike. Communication is counted, not estimated: a DDP comm hook adds up the bytes of every
gradient bucket DDP all-reduces, and ``torch.distributed.all_reduce`` is wrapped to count what
xsam itself reduces (the averaged XSAM direction, probe losses, the finite flag). DDP's buffer
broadcast at each forward (BatchNorm statistics) is not included.

    python benchmarks/bench_distributed.py            # ~3 min on 2 cores
    python benchmarks/bench_distributed.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import xsam
from xsam.models import build_model
from xsam.train.process_group import close_process_group

_REAL_ALL_REDUCE = dist.all_reduce  # the comm hook uses this, so it is not counted twice

VARIANTS = [
    ("sgd", None, None),
    ("sam", "local", None),
    ("sam", "global", None),
    ("xsam", "local", 0.5),
    ("xsam", "global", 0.5),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counter:
    def __init__(self) -> None:
        self.ddp_bytes = 0
        self.xsam_bytes = 0


def _hook(counter: Counter):
    def hook(state, bucket):
        buf = bucket.buffer()
        counter.ddp_bytes += buf.numel() * buf.element_size()
        fut = _REAL_ALL_REDUCE(buf.div_(dist.get_world_size()), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    return hook


def _worker(rank, world, port, args, out_path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(args.threads_per_rank)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    counter = Counter()
    real, counting = _counting_all_reduce(counter)
    local_batch = args.batch // world
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(local_batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (local_batch,), generator=g)
    setups = [_setup(name, pert, alpha, world, counter) for name, pert, alpha in VARIANTS]
    times, comm = _time_rounds(setups, x, y, world, counter, (real, counting), args)
    if rank == 0:
        Path(out_path).write_text(json.dumps(_rows(setups, times, comm, args)))
    if world > 1:
        del setups
        close_process_group(synchronise=True)


def _counting_all_reduce(counter: Counter):
    """The real ``dist.all_reduce`` and a stand-in that adds the bytes it reduces to ``counter``."""
    real = dist.all_reduce

    def counting(tensor, *a, **kw):
        counter.xsam_bytes += tensor.numel() * tensor.element_size()
        return real(tensor, *a, **kw)

    return real, counting


def _setup(name, pert, alpha, world, counter):
    """One variant: ``(name, perturbation, model (DDP-wrapped when world > 1), optimizer)``."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1)
    wrapped = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model)
        wrapped.register_comm_hook(None, _hook(counter))
    kw = dict(lr=0.01, momentum=0.9)
    if name == "sgd":
        opt = torch.optim.SGD(wrapped.parameters(), **kw)
    else:
        extra = {"perturbation": pert} if world > 1 else {}
        if name == "sam":
            opt = xsam.SAM(
                wrapped.parameters(), torch.optim.SGD, rho=0.05, model=wrapped, **extra, **kw
            )
        else:
            opt = xsam.XSAM(
                wrapped.parameters(),
                torch.optim.SGD,
                rho=0.15,
                alpha=alpha,
                model=wrapped,
                **extra,
                **kw,
            )
    return name, pert, wrapped, opt


def _update(wrapped, opt, x, y):
    def closure():
        loss = F.cross_entropy(wrapped(x), y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    if isinstance(opt, xsam.SAMFamily):
        opt.step(closure)
    else:
        opt.zero_grad()
        closure()
        opt.step()


def _time_rounds(setups, x, y, world, counter, all_reduces, args):
    """Seconds per update of each setup (one per timed round) and, with world > 1, the bytes per
    update all-reduced by DDP and by xsam, counted in the first timed round."""
    real, counting = all_reduces
    times = {i: [] for i in range(len(setups))}
    comm = {}
    for rnd in range(args.warmup + args.rounds):
        for i, (_, _, wrapped, opt) in enumerate(setups):
            if world > 1:
                dist.barrier()
                counter.ddp_bytes = counter.xsam_bytes = 0
                dist.all_reduce = counting
            t0 = time.perf_counter()
            for _ in range(args.updates):
                _update(wrapped, opt, x, y)
            if world > 1:
                dist.barrier()
                dist.all_reduce = real
            dt = time.perf_counter() - t0
            if rnd >= args.warmup:
                times[i].append(dt / args.updates)
            if world > 1 and rnd == args.warmup:
                comm[i] = (counter.ddp_bytes / args.updates, counter.xsam_bytes / args.updates)
    return times, comm


def _rows(setups, times, comm, args) -> list[dict]:
    """One result row per setup: the median time and the communication per update."""
    params = sum(p.numel() * p.element_size() for p in setups[0][2].parameters())
    rows = []
    for i, (name, pert, _, _) in enumerate(setups):
        med = statistics.median(times[i])
        ddp_b, own_b = comm.get(i, (0.0, 0.0))
        rows.append(
            {
                "optimizer": name,
                "perturbation": pert,
                "s_per_update": med,
                "images_per_s": args.batch / med,
                "ddp_bytes_per_update": ddp_b,
                "xsam_bytes_per_update": own_b,
                "param_bytes": params,
            }
        )
    return rows


def run(world: int, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        mp.spawn(_worker, args=(world, _port(), args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--updates", type=int, default=5, help="updates per timed block")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    args = ap.parse_args()
    if args.quick:
        args.updates, args.rounds = 2, 2
    results = {}
    for world, threads in ((1, 2), (2, 1)):
        args.threads_per_rank = threads
        results[world] = run(world, args)
    lines = [
        "| optimizer | perturbation | 1 process × 2 threads (img/s) | 2 processes × 1 thread (img/s) "
        "| speed-up | DDP gradient all-reduce per update | xsam's own all-reduce per update |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    pbytes = results[2][0]["param_bytes"]
    for one, two in zip(results[1], results[2]):
        lines.append(
            f"| {two['optimizer']} | {two['perturbation'] or '–'} | {one['images_per_s']:.0f} | "
            f"{two['images_per_s']:.0f} | {two['images_per_s'] / one['images_per_s']:.2f} | "
            f"{two['ddp_bytes_per_update'] / pbytes:.2f} × params | "
            f"{two['xsam_bytes_per_update']:.0f} B ({two['xsam_bytes_per_update'] / pbytes:.3f} × params) |"
        )
    table = "\n".join(lines)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "param_bytes": pbytes,
        "global_batch": args.batch,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(table)
    print(f"\nsmall_cnn, {pbytes} parameter bytes, global batch {args.batch}, gloo on CPU; {meta}")


if __name__ == "__main__":
    main()
