"""XSAM with the Hugging Face Trainer on several processes: SAMTrainer under torchrun.

    torchrun --nproc_per_node=2 examples/hf_trainer_ddp.py [--smoke] [--perturbation local]
    # several machines: torchrun --nnodes=N --node_rank=R --master_addr=HOST ... (docs/multi-gpu.md)

A tiny BERT built from a config (no download) on a synthetic task, gloo on the CPU (NCCL on
CUDA). SAMTrainer attaches the optimizer to the model the Trainer wraps in DDP at the first
step; perturbation= chooses what the ranks share: "local" (the default, the SAM paper's
per-device perturbation: each rank ascends from its own micro-batches, the update averages the
ranks' directions d in one all-reduce, as SGD all-reduces its gradient) or "global" (every pass
all-reduced, as one process on the global batch).

The loss is the Trainer's own: for models whose forward takes **kwargs (BERT's does) the Trainer
multiplies it by the number of processes, and with gradient accumulation it does not divide by
the accumulation steps; the plain Trainer's step is then processes x accumulation times a
mean-loss step, and SAMTrainer's is the same multiple of the mean-loss SAM step (measured in
tests/test_frameworks_ddp.py). Needs `pip install "torch-xsam[transformers]"`.
"""

import argparse
import gc
import os
import tempfile

import torch
import torch.distributed as dist
import transformers

from xsam.integrations.transformers import SAMTrainer


def make_dataset(n, seq=8, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, seq), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, torch.randint(0, seq, (int(labels.sum()),), generator=g)] = 1
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


def replica_spread(model) -> float:
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - flat).abs().max()) for g in gathered)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--perturbation", choices=["local", "global"], default="local")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error("launch with torchrun, e.g. torchrun --nproc_per_node=2 " + __file__)

    torch.manual_seed(0)  # the same initial weights on every rank
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=2,
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    data = make_dataset(64 if args.smoke else 1024)
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=1 if args.smoke else args.epochs,
            per_device_train_batch_size=8, gradient_accumulation_steps=2, max_grad_norm=1.0,
            optim="sgd", learning_rate=0.05, lr_scheduler_type="constant", logging_steps=2,
            save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=not cuda,
            ddp_backend="nccl" if cuda else "gloo",
        )  # fmt: skip
        trainer = SAMTrainer(
            model=model, args=training_args, train_dataset=data, perturbation=args.perturbation,
            sam="xsam", sam_kwargs={"rho": 0.1, "alpha": "auto", "alpha_every": 8},
        )  # fmt: skip
        result = trainer.train()
    spread = replica_spread(model)
    opt = trainer.sam_optimizer
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} processes, perturbation={opt.perturbation}")
        print(f"updates {opt.updates}, alpha {opt.alpha:.2f}")
        print(f"final_loss={result.training_loss:.6f}")
        print(f"replica_max_abs_diff={spread:.3e}")
    del trainer, opt
    gc.collect()  # free what holds the process group, then shut it down on every rank
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
