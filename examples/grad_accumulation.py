"""Gradient accumulation with the closure API: loop over the micro-batches inside the closure.

step() clears the gradients before each closure call only, so every pass (clean, ascent point,
α probe) sees the gradient of the whole batch. The example checks it: one update from 4
micro-batches of 16 gives the same weights as one update from the batch of 64.

    python examples/grad_accumulation.py [--smoke]
"""

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

import xsam


def make_data(n=512, features=20, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, features, generator=g)
    return x, y


def make_closure(model, micro_batches):
    n = len(micro_batches)

    def closure():
        total = 0.0
        for xb, yb in micro_batches:
            loss = F.cross_entropy(model(xb), yb) / n  # mean over the whole batch
            if torch.is_grad_enabled():
                loss.backward()  # accumulates into .grad
            total = total + loss.detach()
        return total

    return closure


def make_opt(model):
    return xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto", alpha_every=8,
                     lr=0.05, momentum=0.9)  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--micro-batches", type=int, default=4)
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    torch.manual_seed(0)
    x, y = make_data()
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    twin = copy.deepcopy(model)
    opt, twin_opt = make_opt(model), make_opt(twin)

    batch = 64
    for epoch in range(epochs):
        total, steps = 0.0, 0
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            micro = list(zip(xb.chunk(args.micro_batches), yb.chunk(args.micro_batches)))
            total += float(opt.step(make_closure(model, micro)))
            twin_opt.step(make_closure(twin, [(xb, yb)]))  # the same, unaccumulated
            steps += 1
        print(f"epoch {epoch + 1}: loss {total / steps:.4f}")
    diff = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), twin.parameters()))
    print(f"accumulated vs whole batch: max |difference| = {diff:.2e}")
    print(f"final_loss={total / steps:.6f}")
    print(f"max_abs_diff={diff:.3e}")


if __name__ == "__main__":
    main()
