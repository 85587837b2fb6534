"""The training tests' shared toy: a synthetic image set whose pixels spell each example's
index, a validated config and a fresh run state on it, bit-for-bit equality through nested
checkpoints, and the tiny whole run on the embedded sample (``tiny``: 4 updates per epoch)."""

from __future__ import annotations

import io
import math

import torch

from xsam.data import BatchLoader, ImageDataset
from xsam.train import TrainConfig
from xsam.train.loop import make_loaders, select_examples
from xsam.train.process_group import Ranks
from xsam.train.state import RunState, build_run_state

CPU = torch.device("cpu")


def synthetic(n_train: int = 200, n_test: int = 50) -> ImageDataset:
    """28×28 one-channel images whose first two pixels spell the example's index."""

    def images(n: int, offset: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(offset)
        x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        ids = torch.arange(offset, offset + n)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = (ids % 256).to(torch.uint8), (ids // 256).to(torch.uint8)
        return x

    return ImageDataset(
        name="synthetic",
        train_x=images(n_train, 0),
        train_y=torch.arange(n_train) % 10,
        test_x=images(n_test, 10_000),
        test_y=torch.arange(n_test) % 10,
        num_classes=10,
        mean=(0.5,),
        std=(0.25,),
    )


def ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def config(**kw) -> TrainConfig:
    base = dict(batch_size=32, epochs=3, threads=1, augment="crop2+flip", device="cpu")
    return TrainConfig(**{**base, **kw}).validated()


def state_of(cfg: TrainConfig, data: ImageDataset | None = None) -> tuple[RunState, BatchLoader]:
    """A fresh run state on the synthetic data, and its test loader."""
    data = data or synthetic()
    run = make_loaders(cfg, data, select_examples(cfg, data), CPU, Ranks())
    state = build_run_state(
        cfg,
        run.train,
        num_classes=10,
        image_shape=(1, 28, 28),
        data_fingerprint=run.fingerprint,
        device=CPU,
        ranks=Ranks(),
    )
    return state, run.test


def same(a, b) -> bool:
    """Equal, tensors bit for bit, through nested dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def through_disk(ckpt: dict) -> dict:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


# 256 training and 128 test images of the embedded sample, batch 64: 4 updates per epoch.
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, threads=1)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})
