"""Lightning with 2 CPU processes (gloo) and Lightning's own launcher: every run of
common.RUNS through SAMModule, a plain SGD run (the calibration), and the settings around them
(clipping, bf16-mixed, a perturbation schedule, resume from Lightning's checkpoint). Each rank saves its weights per run; tests/test_frameworks_ddp.py compares them.

    python tests/frameworks_ddp/lightning_run.py OUT_DIR [--strategy ddp|ddp_spawn] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import xsam  # noqa: E402
from xsam.integrations.lightning import SAMModule  # noqa: E402


class Shards(pl.LightningModule):
    """Hands each rank its own micro-batches (common.micro_batches), in order."""

    def __init__(self, name: str, out: str, accum: int, dtype=common.DT, epochs: int = 1):
        super().__init__()
        self.net = common.net(dtype)
        self.name, self.out, self.accum, self.data_dtype = name, out, accum, dtype

    def train_dataloader(self):
        batches = common.micro_batches(self.global_rank, self.accum, dtype=self.data_dtype)
        return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)

    def on_train_end(self) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        d_norm = float(torch.cat([g.reshape(-1) for g in grads]).norm()) if grads else 0.0
        common.save_result(self.out, self.name, self.global_rank, self.net, d_norm=d_norm)


class Plain(Shards):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=common.LR)


class Sharp(SAMModule, Shards):
    sam_log_name = None

    def __init__(self, name, out, accum, kind, mode, dtype=common.DT, schedule=None):
        super().__init__(name, out, accum, dtype)
        self.kind, self.sam_perturbation, self.schedule = kind, mode, schedule

    def sam_loss(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return common.make_opt(self.kind, self.parameters(), model=self, schedule=self.schedule)


def trainer(strategy: str, accum: int, precision="64-true", epochs=1, **kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", devices=common.WORLD, strategy=strategy, max_epochs=epochs,
        accumulate_grad_batches=accum, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, num_sanity_val_steps=0, **kw,
    )  # fmt: skip


def runs(out: str, strategy: str):
    """(name, build the module, trainer keywords, fit keywords), in order."""
    for accum in (1, 2):
        yield f"plain-a{accum}", lambda a=accum: Plain(f"plain-a{a}", out, a), dict(accum=accum)
    for kind, mode, accum in common.RUNS:
        name = f"{kind}-{mode}-a{accum}"
        yield (
            name,
            lambda n=name, k=kind, m=mode, a=accum: Sharp(n, out, a, k, m),
            dict(accum=accum),
        )
    yield (
        "xsam-local-a2-clip",
        lambda: Sharp("xsam-local-a2-clip", out, 2, "xsam", "local"),
        dict(accum=2, gradient_clip_val=0.05),
    )
    yield "sam-local-a1-schedule", lambda: Sharp(
        "sam-local-a1-schedule", out, 1, "sam", "local",
        schedule=xsam.PerturbationSchedule(every=2),
    ), dict(accum=1)  # fmt: skip
    yield (
        "sam-local-a2-bf16",
        lambda: Sharp("sam-local-a2-bf16", out, 2, "sam", "local", dtype=torch.float32),
        dict(accum=2, precision="bf16-mixed", gradient_clip_val=0.05),
    )


def fit(strategy: str, build, kw, ckpt=None):
    module = build()
    t = trainer(strategy, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers, logging, CPU
        t.fit(module, ckpt_path=ckpt)
    return t, module


def resume(out: str, strategy: str) -> None:
    """xsam-local-a2 over 2 epochs, uninterrupted and stopped after the first epoch, saved with
    trainer.save_checkpoint, resumed by a fresh Trainer with ckpt_path."""
    build = lambda n: lambda: Sharp(n, out, 2, "xsam", "local")  # noqa: E731
    fit(strategy, build("resume-whole"), dict(accum=2, epochs=2))
    t, _ = fit(strategy, build("resume-first"), dict(accum=2, epochs=1))
    path = os.path.join(out, "first.ckpt")
    t.save_checkpoint(path)
    fit(strategy, build("resume-rest"), dict(accum=2, epochs=2), ckpt=path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--only", default=None, help="run only this run (e.g. xsam-local-a2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name, build, kw in runs(args.out, args.strategy):
        if args.only in (None, name):
            fit(args.strategy, build, kw)
    if args.only in (None, "resume"):
        resume(args.out, args.strategy)


if __name__ == "__main__":
    main()
