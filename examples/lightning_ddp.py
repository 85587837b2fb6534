"""XSAM with Lightning on several processes: SAMModule under strategy="ddp".

Lightning's own launcher starts the other processes (gloo on the CPU, NCCL on CUDA); nothing
else changes from a one-process SAMModule ("ddp_spawn" works the same way). sam_perturbation chooses what the ranks share:
"local" (the default, the SAM paper's per-device perturbation: each rank ascends from its own
micro-batches, and the update averages the ranks' directions d in one all-reduce, as SGD
all-reduces its gradient) or "global" (every pass all-reduced: one process on the global
batch, k + 1 gradient all-reduces per update). See docs/multi-gpu.md.

    python examples/lightning_ddp.py [--smoke] [--devices 2] [--perturbation local]
                                     [--accumulate 2]
    # several machines: the same script with num_nodes=N (Lightning's docs on launching)
"""

import argparse
import warnings

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import xsam
from xsam.integrations.lightning import SAMModule


def make_data(n=512, features=20, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return x, y


class Classifier(SAMModule):
    def __init__(self, perturbation, alpha_every):
        super().__init__()
        self.sam_perturbation = perturbation  # "local" (default) or "global"
        self.alpha_every = alpha_every
        self.net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))

    def sam_loss(self, batch, batch_idx):  # forward and loss only: called once per pass
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return xsam.XSAM(
            self.parameters(), torch.optim.SGD, rho=0.15, alpha="auto",
            alpha_every=self.alpha_every, model=self, lr=0.05, momentum=0.9,
        )  # fmt: skip


def replica_spread(module) -> float:
    """Largest difference between this rank's weights and any other rank's."""
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - flat).abs().max()) for g in gathered)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--perturbation", choices=["local", "global"], default="local")
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--clip", type=float, default=1.0)
    args = parser.parse_args()

    torch.manual_seed(0)  # the same initial weights on every rank
    x, y = make_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    steps = len(loader) // args.devices // args.accumulate  # updates per epoch, per rank
    module = Classifier(args.perturbation, alpha_every=max(steps, 1))
    trainer = pl.Trainer(
        accelerator="auto", devices=args.devices, strategy="ddp",
        max_epochs=1 if args.smoke else args.epochs, accumulate_grad_batches=args.accumulate,
        gradient_clip_val=args.clip, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)
    spread = replica_spread(module)  # every rank runs this script to the end
    if trainer.global_rank == 0:
        opt = trainer.optimizers[0]
        loss = float(trainer.callback_metrics["train_loss_epoch"])
        print(f"{trainer.world_size} processes, perturbation={args.perturbation}")
        print(f"updates {opt.updates}, alpha {opt.alpha:.2f}")
        print(f"final_loss={loss:.6f}")
        print(f"replica_max_abs_diff={spread:.3e}")


if __name__ == "__main__":
    main()
