"""XSAM in a plain PyTorch loop: the closure API.

python examples/plain_loop.py            # a few seconds
python examples/plain_loop.py --smoke    # under a second of training (CI)
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import xsam


def make_data(n=512, features=20, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    epochs = 2 if args.smoke else args.epochs

    torch.manual_seed(0)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True
    )
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
    opt = xsam.XSAM(
        model.parameters(), torch.optim.SGD,
        rho=0.15, alpha="auto", alpha_every=len(loader),  # search α once per epoch
        model=model,  # BatchNorm statistics change in the clean pass only
        lr=0.05, momentum=0.9, weight_decay=1e-3,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

    for epoch in range(epochs):
        total = 0.0
        for xb, yb in loader:

            def closure():
                loss = F.cross_entropy(model(xb), yb)
                if torch.is_grad_enabled():  # lets the α probes run forward-only
                    loss.backward()
                return loss

            total += float(opt.step(closure))  # the clean loss
        sched.step()
        print(f"epoch {epoch + 1}: loss {total / len(loader):.4f}  alpha {opt.alpha:.2f}")
    print(f"final_loss={total / len(loader):.6f}")


if __name__ == "__main__":
    main()
