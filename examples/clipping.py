"""Gradient clipping with a SAM-family optimizer: clip in the closure.

The ascent steps are normalised, so clipping by global norm cannot change them; in the last pass
it clips g_k, hence d, the direction the base optimizer steps along (‖d‖ = ‖g_k‖ for XSAM, d =
g_k for SAM). The example checks that the norm of every applied d is at most --max-norm.
(Per-tensor or value clipping changes directions: with XSAM it is not the same as clipping d.)

    python examples/clipping.py [--smoke] [--max-norm 0.5]
"""

import argparse

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-norm", type=float, default=0.5)
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    torch.manual_seed(0)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto",
                    alpha_every=len(loader), lr=0.05, momentum=0.9)  # fmt: skip
    d_norms = []  # the norm of d as the base optimizer sees it, recorded by a step pre-hook
    opt.base_optimizer.register_step_pre_hook(
        lambda base, a, k: d_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
    )

    for epoch in range(epochs):
        total = 0.0
        for xb, yb in loader:

            def closure():
                loss = F.cross_entropy(model(xb), yb)
                if torch.is_grad_enabled():
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_norm)
                return loss

            total += float(opt.step(closure))
        print(f"epoch {epoch + 1}: loss {total / len(loader):.4f}  max |d| {max(d_norms):.4f}")
    print(f"final_loss={total / len(loader):.6f}")
    print(f"max_d_norm={max(d_norms):.6f}")


if __name__ == "__main__":
    main()
