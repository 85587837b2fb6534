"""XSAM with Lightning: subclass xsam.integrations.lightning.SAMModule and write sam_loss().

The Trainer's own settings apply unchanged: precision, accumulate_grad_batches,
gradient_clip_val (applied to d, the final direction); the logged train_loss is the clean loss.
Needs `pip install "torch-xsam[lightning]"`.

    python examples/lightning_module.py [--smoke] [--precision bf16-mixed] [--accumulate 2]
"""

import argparse
import warnings

import lightning.pytorch as pl
import torch
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
    def __init__(self, steps_per_epoch):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
        self.steps_per_epoch = steps_per_epoch

    def sam_loss(self, batch, batch_idx):  # forward and loss only: called once per pass
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return xsam.XSAM(
            self.parameters(), torch.optim.SGD, rho=0.15, alpha="auto",
            alpha_every=self.steps_per_epoch, model=self, lr=0.05, momentum=0.9,
        )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--precision", default="bf16-mixed", help="32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--clip", type=float, default=1.0)
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    torch.manual_seed(0)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    module = Classifier(steps_per_epoch=len(loader) // args.accumulate)
    trainer = pl.Trainer(
        max_epochs=epochs, precision=args.precision, accumulate_grad_batches=args.accumulate,
        gradient_clip_val=args.clip, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, loader)
    loss = float(trainer.callback_metrics["train_loss_epoch"])
    opt = trainer.optimizers[0]
    print(f"updates {opt.updates}, alpha {opt.alpha:.2f}")
    print(f"final_loss={loss:.6f}")


if __name__ == "__main__":
    main()
