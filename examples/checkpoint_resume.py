"""Checkpoint and resume: opt.state_dict() holds everything needed to continue exactly.

Trains N updates, saves model + optimizer (base state, param groups, XSAM's α schedule) + LR
scheduler, loads them into fresh objects, trains M more; compares with N + M straight updates.
On the CPU the weights are equal bit for bit.

    python examples/checkpoint_resume.py [--smoke]
"""

import argparse
import os
import tempfile

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


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3))
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto", alpha_every=5,
                    model=model, lr=0.05, momentum=0.9)  # fmt: skip
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, batches):
    loss = None
    for xb, yb in batches:

        def closure(xb=xb, yb=yb):
            loss = F.cross_entropy(model(xb), yb)
            if torch.is_grad_enabled():
                loss.backward()
            return loss

        loss = float(opt.step(closure))
        sched.step()
    return loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    n, m = (6, 6) if args.smoke else (40, 40)
    x, y = make_data()
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    batches = (batches * 10)[: n + m]

    straight = build()
    train(*straight, batches)

    first = build()
    train(*first, batches[:n])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.pt")
        model, opt, sched = first
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict()}, path)  # fmt: skip
        resumed = build()  # fresh objects, as after a restart
        ckpt = torch.load(path, weights_only=True)
        resumed[0].load_state_dict(ckpt["model"])
        resumed[1].load_state_dict(ckpt["opt"])
        resumed[2].load_state_dict(ckpt["sched"])
    loss = train(*resumed, batches[n:])

    a, b = straight[0].state_dict(), resumed[0].state_dict()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"{n} + {m} updates, resumed after {n}: max |weights - uninterrupted| = {diff:g}")
    print(f"final_loss={loss:.6f}")
    print(f"resume_max_abs_diff={diff:.3e}")


if __name__ == "__main__":
    main()
