"""XSAM with Accelerate: prepare as usual, then one sam_update per optimizer step.

Do not put opt.step(closure) inside accelerator.accumulate(): with gradient accumulation,
Accelerate's optimizer skips the steps that do not sync, so their closure (and batch) never
runs. Gather the micro-batches of a step and pass them to sam_update, which forwards every one
in every pass, scales fp16 losses with the Accelerator's GradScaler, clips d and returns the
clean loss. Needs `pip install "torch-xsam[accelerate]"`. Runs under `accelerate launch` or
torchrun as well (DDP).

    python examples/accelerate_loop.py [--smoke] [--mixed-precision bf16] [--accumulate 2]
"""

import argparse

import accelerate
import torch
import torch.nn.functional as F
from torch import nn

import xsam
from xsam.integrations.accelerate import sam_update


def make_data(n=512, features=20, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    parser.add_argument("--accumulate", type=int, default=2, help="micro-batches per step")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    accelerator = accelerate.Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(0)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto",
                    alpha_every=len(loader) // args.accumulate, model=model, lr=0.05,
                    momentum=0.9)  # fmt: skip
    model, opt, loader = accelerator.prepare(model, opt, loader)

    def loss_fn(batch):
        xb, yb = batch
        return F.cross_entropy(model(xb), yb)

    for epoch in range(epochs):
        total, steps, window = 0.0, 0, []
        for batch in loader:
            window.append(batch)
            if len(window) == args.accumulate:
                loss = sam_update(accelerator, opt, window, loss_fn, model=model, max_grad_norm=1.0)
                total, steps, window = total + float(loss), steps + 1, []
        accelerator.print(f"epoch {epoch + 1}: loss {total / steps:.4f}")
    accelerator.print(f"final_loss={total / steps:.6f}")


if __name__ == "__main__":
    main()
