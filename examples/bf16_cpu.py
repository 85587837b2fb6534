"""XSAM with bfloat16 autocast on the CPU (or CUDA): the lower-level API, no GradScaler.

bfloat16 has float32's range, so no loss scaling is needed: backward() on the plain loss and
descent_step(scaler=None). Every pass (clean, ascent, α probes) runs under autocast.

    python examples/bf16_cpu.py [--smoke]
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
    args = parser.parse_args()
    epochs = 2 if args.smoke else args.epochs
    device = "cuda" if torch.cuda.is_available() else "cpu"

    torch.manual_seed(0)
    x, y = make_data()
    data = torch.utils.data.TensorDataset(x.to(device), y.to(device))
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3)).to(device)
    opt = xsam.XSAM(
        model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto", alpha_every=len(loader),
        model=model, lr=0.05, momentum=0.9,
    )  # fmt: skip

    for epoch in range(epochs):
        total = 0.0
        for xb, yb in loader:

            def forward():
                with torch.autocast(device, dtype=torch.bfloat16):
                    return F.cross_entropy(model(xb), yb)

            def probe():  # XSAM's α probes: forward only
                with torch.no_grad():
                    return forward()

            opt.zero_grad()
            with opt.clean_pass():
                loss = forward()  # the clean loss, at the weights before the update
                loss.backward()
            for _ in range(opt.steps):
                opt.ascent_step()
                with opt.perturbed_pass():
                    forward().backward()
            opt.descent_step(loss_fn=probe)  # d, θ₀ restored, base optimizer step
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: loss {total / len(loader):.4f}  alpha {opt.alpha:.2f}")
    print(f"final_loss={total / len(loader):.6f}")


if __name__ == "__main__":
    main()
