"""XSAM with a torch.compile'd model: compile the module, keep the optimizer step eager.

The compiled module is called by the closure in every pass; XSAM's α probes call it under
torch.no_grad(), which compiles a second (inference) graph once. The optimizer's own vector
work is already fused (torch._foreach_*), so the step itself is left uncompiled.

The default backend, inductor, needs a C++ compiler on the CPU and takes tens of seconds to
compile even this small model. --smoke uses the "aot_eager" backend (graph capture and
AOTAutograd, no code generation); without a C++ compiler the example says so and uses
"aot_eager" too.

    python examples/torch_compile.py [--smoke] [--backend inductor]
"""

import argparse
import shutil

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


def pick_backend(requested):
    needs_cc = requested == "inductor" and not torch.cuda.is_available()
    if needs_cc and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        print("torch_compile: no C++ compiler found, which inductor needs on the CPU: "
              "using backend='aot_eager' instead")  # fmt: skip
        return "aot_eager"
    return requested


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--backend", default=None, help="torch.compile backend (default inductor)")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs
    backend = pick_backend(args.backend or ("aot_eager" if args.smoke else "inductor"))
    print(f"torch.compile backend: {backend}")

    torch.manual_seed(0)
    x, y = make_data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, drop_last=True
    )
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    compiled = torch.compile(model, backend=backend)
    opt = xsam.XSAM(model.parameters(), torch.optim.SGD, rho=0.15, alpha="auto",
                    alpha_every=len(loader), lr=0.05, momentum=0.9)  # fmt: skip

    for epoch in range(epochs):
        total = 0.0
        for xb, yb in loader:

            def closure():
                loss = F.cross_entropy(compiled(xb), yb)
                if torch.is_grad_enabled():
                    loss.backward()
                return loss

            total += float(opt.step(closure))
        print(f"epoch {epoch + 1}: loss {total / len(loader):.4f}  alpha {opt.alpha:.2f}")
    print(f"final_loss={total / len(loader):.6f}")


if __name__ == "__main__":
    main()
