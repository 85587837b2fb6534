"""Training throughput of SGD, SAM, XSAM and cheap perturbation schedules (issue 13, part 4).

ResNet-18 (CIFAR variant) on CIFAR-shaped synthetic data — a fixed batch of 128 images
3×32×32, 10 classes — with bf16 autocast and channels_last, as on a GPU. Variants: SGD, SAM
k=1, XSAM k=1 (α searched at the first update, then held), and XSAM with
``PerturbationSchedule(every=2, reuse=0.7)`` and ``every=4, reuse=0.7`` (cheap steps between the
full updates). Rounds are interleaved (each round runs every variant for ``--steps`` updates,
in a shuffled order); images/s and the ratio to SGD are medians over rounds (the ratio: of
per-round ratios).

Usage::

    python benchmarks/gpu_throughput.py                     # CUDA, full settings (~2 min)
    python benchmarks/gpu_throughput.py --smoke --device cpu  # seconds: checks it still runs

Writes ``results/throughput_<device>[_smoke].json`` and ``.md`` beside this script.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import xsam
from xsam.models import build_model

VARIANTS = {
    "sgd": "SGD",
    "sam": "SAM k=1",
    "xsam": "XSAM k=1 (α auto)",
    "xsam_every2": "XSAM every=2, reuse=0.7",
    "xsam_every4": "XSAM every=4, reuse=0.7",
}
BASE_KW = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny run (small_cnn, batch 4, 1 round of 1)"
    )
    ap.add_argument("--model", default=None, help="model name (resnet18; smoke small_cnn)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (128; smoke 4)")
    ap.add_argument("--steps", type=int, default=None, help="updates per round (20; smoke 2)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (5; smoke 2)")
    ap.add_argument("--no-bf16", action="store_true", help="float32 instead of bf16 autocast")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    return ap


def make_optimizer(kind: str, model: torch.nn.Module) -> Any:
    params = model.parameters()
    if kind == "sgd":
        return torch.optim.SGD(params, **BASE_KW)
    if kind == "sam":
        return xsam.SAM(params, torch.optim.SGD, rho=0.05, model=model, **BASE_KW)
    every = {"xsam": 1, "xsam_every2": 2, "xsam_every4": 4}[kind]
    schedule = xsam.PerturbationSchedule(every=every, reuse=0.7 if every > 1 else 0.0)
    return xsam.XSAM(params, torch.optim.SGD, rho=0.1, model=model, schedule=schedule, **BASE_KW)


class Run:
    """One variant: its own model (same initial weights), optimizer and the fixed batch."""

    def __init__(self, kind: str, model: str, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> None:
        torch.manual_seed(0)
        self.model = build_model(model, 10, 3).to(x.device)
        self.model = self.model.to(memory_format=torch.channels_last).train()
        self.opt = make_optimizer(kind, self.model)
        self.kind, self.x, self.y, self.bf16 = kind, x, y, bf16

    def closure(self) -> torch.Tensor:
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(self.x), self.y)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    def update(self) -> None:
        if self.kind == "sgd":
            self.opt.zero_grad(set_to_none=True)
            self.closure()
            self.opt.step()
        else:
            self.opt.step(self.closure)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(runs: dict[str, Run], steps: int, rounds: int, device: torch.device) -> Any:
    times: dict[str, list[float]] = {k: [] for k in runs}
    rng = random.Random(0)
    for r in range(rounds + 1):  # round 0: warm-up (and XSAM's first α search)
        order = list(runs)
        rng.shuffle(order)
        for kind in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                runs[kind].update()
            sync(device)
            if r > 0:
                times[kind].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]], batch: int, steps: int) -> dict[str, Any]:
    rows = {}
    for kind, ts in times.items():
        ratio = [s / t for s, t in zip(times["sgd"], ts)]  # throughput / SGD's, per round
        rows[kind] = {
            "images_per_s": batch * steps / statistics.median(ts),
            "ratio_to_sgd": statistics.median(ratio),
            "seconds_per_round": ts,
        }
    return rows


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        f"Throughput, {s['model']} (CIFAR) on synthetic {s['batch']}×3×32×32 batches, "
        f"{'bf16 autocast' if s['bf16'] else 'float32'}, channels_last, device "
        f"`{res['device']}`{' (smoke run)' if s['smoke'] else ''}; {s['rounds']} interleaved "
        f"rounds of {s['steps']} updates, medians.",
        "",
        "| optimizer | images/s | throughput / SGD's |",
        "|---|---:|---:|",
    ]
    for kind, row in res["rows"].items():
        lines.append(
            f"| {VARIANTS[kind]} | {row['images_per_s']:.1f} | {row['ratio_to_sgd']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available (use --device cpu for a smoke run)", file=sys.stderr)
        return 2
    batch = args.batch or (4 if args.smoke else 128)
    steps = args.steps or (1 if args.smoke else 20)
    rounds = args.rounds or (1 if args.smoke else 5)
    model = args.model or ("small_cnn" if args.smoke else "resnet18")
    bf16 = not args.no_bf16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    runs = {k: Run(k, model, x, y, bf16) for k in VARIANTS}
    t0 = time.perf_counter()
    times = time_rounds(runs, steps, rounds, device)
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "settings": {"batch": batch, "steps": steps, "rounds": rounds, "bf16": bf16}
        | {"smoke": args.smoke, "channels_last": True, "model": model},
        "rows": summarise(times, batch, steps),
        "updates": {k: getattr(r.opt, "updates", None) for k, r in runs.items()},
        "cheap_updates": {k: getattr(r.opt, "cheap_updates", None) for k, r in runs.items()},
        "wall_s": time.perf_counter() - t0,
    }
    stem = f"throughput_{device.type}" + ("_smoke" if args.smoke else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out_dir / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
