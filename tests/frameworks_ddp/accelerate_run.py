"""Accelerate with 2 CPU processes (gloo), started by Accelerate's notebook_launcher: every
run of common.RUNS through sam_update, and a plain SGD loop (the calibration: the mean loss of
the step's micro-batches, no_sync on all but the last). Each rank saves its weights per run;
tests/test_frameworks_ddp.py compares them.

    python tests/frameworks_ddp/accelerate_run.py OUT_DIR PORT [--only NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from xsam.integrations.accelerate import sam_update  # noqa: E402


def _windows(rank: int, accum: int, steps: int):
    batches = common.micro_batches(rank, accum)
    return [batches[s * accum : (s + 1) * accum] for s in range(steps)]


def plain(accelerator, out: str, accum: int) -> None:
    net = common.net()
    model, opt = accelerator.prepare(net, torch.optim.SGD(net.parameters(), lr=common.LR))
    for window in _windows(accelerator.process_index, accum, 1):
        for i, (x, y) in enumerate(window):
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                accelerator.backward(F.cross_entropy(model(x), y) / len(window))
        opt.step()
        opt.zero_grad()
    common.save_result(out, f"plain-a{accum}", accelerator.process_index, net)


def sharp(accelerator, out: str, kind: str, mode: str, accum: int) -> None:
    net = common.net()
    model, opt = accelerator.prepare(net, common.make_opt(kind, net.parameters()))

    def loss_fn(batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    for window in _windows(accelerator.process_index, accum, common.STEPS):
        sam_update(accelerator, opt, window, loss_fn, model=model, perturbation=mode)
    common.save_result(out, f"{kind}-{mode}-a{accum}", accelerator.process_index, net)


def worker(out: str, only: str | None) -> None:
    import accelerate

    torch.set_num_threads(1)
    accelerator = accelerate.Accelerator(cpu=True)
    assert accelerator.num_processes == common.WORLD
    for accum in (1, 2):
        if only in (None, f"plain-a{accum}"):
            plain(accelerator, out, accum)
    for kind, mode, accum in common.RUNS:
        if only in (None, f"{kind}-{mode}-a{accum}"):
            sharp(accelerator, out, kind, mode, accum)
    accelerator.wait_for_everyone()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("port")
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    from accelerate import notebook_launcher

    notebook_launcher(worker, (args.out, args.only), num_processes=common.WORLD,
                      use_port=args.port)  # fmt: skip


if __name__ == "__main__":
    main()
