"""XSAM with float16 autocast and a GradScaler on CUDA: the lower-level API.

float16 needs loss scaling; the GradScaler scales every pass's loss, the ascent steps are
normalised (the scale cancels), and descent_step(scaler=...) unscales d, skips the update if any
pass overflowed (the weights stay bit-identical) and steps the base optimizer; then
scaler.update() as usual.

This recipe needs CUDA: on a CPU, torch.amp.GradScaler("cuda") and float16 autocast would
silently train in float32. Without CUDA, --smoke says so and exits 0; a full run exits 2. On a
CPU, use examples/bf16_cpu.py.

    python examples/fp16_gradscaler_cuda.py [--smoke]
"""

import argparse
import sys

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
    if not torch.cuda.is_available():
        print("fp16_gradscaler_cuda: needs CUDA, none available: not run "
              "(on a CPU use examples/bf16_cpu.py)")  # fmt: skip
        sys.exit(0 if args.smoke else 2)
    epochs = 2 if args.smoke else args.epochs

    torch.manual_seed(0)
    x, y = make_data()
    data = torch.utils.data.TensorDataset(x.cuda(), y.cuda())
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3)).cuda()
    opt = xsam.XSAM(
        model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto", alpha_every=len(loader),
        model=model, lr=0.05, momentum=0.9,
    )  # fmt: skip
    scaler = torch.amp.GradScaler("cuda")

    for epoch in range(epochs):
        total = 0.0
        for xb, yb in loader:

            def forward():
                with torch.autocast("cuda", dtype=torch.float16):
                    return F.cross_entropy(model(xb), yb)

            def probe():
                with torch.no_grad():
                    return forward()

            opt.zero_grad()
            try:
                with opt.clean_pass():
                    loss = forward()
                    scaler.scale(loss).backward()
                for _ in range(opt.steps):
                    opt.ascent_step()  # normalised: no unscaling needed
                    with opt.perturbed_pass():
                        scaler.scale(forward()).backward()
                opt.descent_step(loss_fn=probe, scaler=scaler)
            except torch.OutOfMemoryError:
                opt.abort_update()  # θ₀, statistics and gradients back
                raise
            scaler.update()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: loss {total / len(loader):.4f}  scale {scaler.get_scale():g}"
              f"  skipped {opt.skipped_updates}")  # fmt: skip
    print(f"final_loss={total / len(loader):.6f}")


if __name__ == "__main__":
    main()
