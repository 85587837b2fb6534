"""XSAM under DistributedDataParallel, launched with torchrun (gloo on the CPU, NCCL on CUDA).

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py [--smoke] [--perturbation local]

Pass the DDP module as model=: the optimizer then knows which passes to synchronise.
"local" (the default under DDP; the SAM paper's per-device perturbation): each rank ascends from
its own batch and the per-rank directions are averaged; "global": every pass is synchronised,
the same as one process on the concatenated batch. Either way the replicas stay identical, which
the example checks at the end.
"""

import argparse
import gc
import os

import torch
import torch.distributed as dist
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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--perturbation", choices=["local", "global"], default="local")
    args = parser.parse_args()
    if "RANK" not in os.environ:
        parser.error("launch with torchrun, e.g. torchrun --nproc_per_node=2 " + __file__)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if cuda else "cpu")
    train(args, device)
    # Shut down cleanly: free what still holds the group (DDP sits in reference cycles), let
    # every rank finish, then destroy it. Destroyed earlier, gloo sometimes aborts the process
    # at exit ("terminate called without an active exception") after the work is done.
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train(args, device):
    rank, world = dist.get_rank(), dist.get_world_size()
    epochs = 1 if args.smoke else args.epochs

    torch.manual_seed(0)  # the same initial weights on every rank
    x, y = make_data()
    data = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.distributed.DistributedSampler(data, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=32, sampler=sampler)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3)).to(device)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = xsam.XSAM(ddp.parameters(), torch.optim.SGD, model=ddp,
                    perturbation=args.perturbation, rho=0.15, alpha="auto",
                    alpha_every=len(loader), lr=0.05, momentum=0.9)  # fmt: skip

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros((), device=device)
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)

            def closure():
                loss = F.cross_entropy(ddp(xb), yb)
                if torch.is_grad_enabled():
                    loss.backward()
                return loss

            total += opt.step(closure)
        dist.all_reduce(total)
        mean = float(total) / (world * len(loader))
        if rank == 0:
            print(f"epoch {epoch + 1}: loss {mean:.4f}  alpha {opt.alpha:.2f}")

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
    if rank == 0:
        print(f"{world} processes, perturbation={opt.perturbation}")
        print(f"final_loss={mean:.6f}")
        print(f"replica_max_abs_diff={spread:.3e}")


if __name__ == "__main__":
    main()
