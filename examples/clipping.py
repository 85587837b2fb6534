"""Gradient clipping with a SAM-family optimizer: clip the direction the update applies.

xsam.clip_direction_norm(opt, max_norm) clips d, the direction the base optimizer steps
along, just before it steps: on full updates and on a schedule's cheap steps, after the reuse
term is added (clipping inside the closure would clip a gradient the reuse term then changes,
and not bound the step), unscaled under a GradScaler, and not on a skipped update. The example
trains XSAM with a full update every other step and LookSAM's reuse on the others, and checks
that the norm of every applied d is at most --max-norm.

    python examples/clipping.py [--smoke] [--max-norm 0.5] [--every 2] [--reuse 0.7]
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
    parser.add_argument("--every", type=int, default=2, help="a full update every N steps")
    parser.add_argument("--reuse", type=float, default=0.7, help="LookSAM's lambda")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    torch.manual_seed(0)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    schedule = xsam.PerturbationSchedule(every=args.every, reuse=args.reuse)
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto",
                    alpha_every=len(loader), lr=0.05, momentum=0.9, schedule=schedule)  # fmt: skip
    xsam.clip_direction_norm(opt, args.max_norm)
    d_norms = []  # the norm of d as the base optimizer steps with it (a later step pre-hook)
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
                return loss

            total += float(opt.step(closure))
        print(f"epoch {epoch + 1}: loss {total / len(loader):.4f}  max |d| {max(d_norms):.4f}")
    print(f"final_loss={total / len(loader):.6f}")
    print(f"max_d_norm={max(d_norms):.6f}")


if __name__ == "__main__":
    main()
