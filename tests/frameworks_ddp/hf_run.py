"""The Hugging Face Trainer with 2 CPU processes (gloo), launched by torchrun: every run of
common.RUNS through SAMTrainer and a plain Trainer run (the calibration of the Trainer's loss
scaling), with a model whose forward takes ``**kwargs`` (as every transformers model's does:
the Trainer then passes num_items_in_batch and multiplies the loss by the number of
processes; this model ignores num_items_in_batch, as sequence classifiers do). Each rank saves
its weights per run; tests/test_frameworks_ddp.py compares them.

    torchrun --nproc_per_node=2 tests/frameworks_ddp/hf_run.py OUT_DIR [--only NAME]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from xsam.integrations.transformers import SAMTrainer  # noqa: E402


class Classifier(nn.Module):
    """``items=False``: the mean cross-entropy of its batch, num_items_in_batch ignored (as
    transformers' sequence classifiers); ``items=True``: the summed cross-entropy divided by
    num_items_in_batch (the Trainer's count over the step's micro-batches on every rank, as
    transformers' causal language models)."""

    def __init__(self, items: bool = False):
        super().__init__()
        self.net, self.items = common.net(), items

    def forward(self, x, labels=None, num_items_in_batch=None, **kwargs):
        logits = self.net(x)
        if self.items:
            loss = F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
        else:
            loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class OwnShards:
    """Each rank's own micro-batches (common.micro_batches), in order, one per Trainer batch."""

    accum = 1

    def get_train_dataloader(self):
        rank = dist.get_rank()
        batches = [{"x": x, "labels": y} for x, y in common.micro_batches(rank, self.accum)]
        return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


class PlainTrainer(OwnShards, transformers.Trainer):
    pass


class SharpTrainer(OwnShards, SAMTrainer):
    pass


def arguments(out: str, accum: int, steps: int) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=out, max_steps=steps, gradient_accumulation_steps=accum,
        learning_rate=common.LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, logging_steps=1000, save_strategy="no", report_to=[],
        disable_tqdm=True, use_cpu=True, ddp_backend="gloo", seed=0,
    )  # fmt: skip


def train(cls, out: str, name: str, accum: int, steps: int, make_opt, items=False, **kw):
    model = Classifier(items)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = (make_opt(model.parameters()), None)
        trainer = cls(model=model, args=arguments(tmp, accum, steps), optimizers=opts, **kw)
        trainer.accum = accum
        trainer.train()
    common.save_result(out, name, dist.get_rank(), model.net)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for accum in (1, 2):
        name = f"plain-a{accum}"
        if args.only in (None, name):
            plain = lambda params: torch.optim.SGD(params, lr=common.LR)  # noqa: E731
            train(PlainTrainer, args.out, name, accum, 1, plain)
    if args.only in (None, "items"):  # the model that divides by num_items_in_batch
        plain = lambda params: torch.optim.SGD(params, lr=common.LR)  # noqa: E731
        train(PlainTrainer, args.out, "plain-items-a2", 2, 1, plain, items=True)
        sharp = lambda params: common.make_opt("xsam", params)  # noqa: E731
        train(SharpTrainer, args.out, "xsam-local-a2-items", 2, common.STEPS, sharp, items=True,
              perturbation="local")  # fmt: skip
    for kind, mode, accum in common.RUNS:
        name = f"{kind}-{mode}-a{accum}"
        if args.only in (None, name):
            sharp = lambda params, k=kind: common.make_opt(k, params)  # noqa: E731
            train(SharpTrainer, args.out, name, accum, common.STEPS, sharp, perturbation=mode)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
