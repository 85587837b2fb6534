"""A run's checkpoint and its resume: the run state round-trips through a checkpoint bit for bit;
restoring refuses another data set, another schedule or a torn checkpoint; resuming refuses a
checkpoint of another run (or a config edited since) and another number of processes."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from xsam.data import BatchLoader, ImageDataset
from xsam.train import ConfigError, TrainConfig, train, without_times
from xsam.train.checkpoint import set_rng_state
from xsam.train.epoch import run_epoch
from xsam.train.loop import make_loaders, select_examples
from xsam.train.ranks import Ranks
from xsam.train.state import LRSchedule, RunState, build_run_state
from xsam.train.updates import (
    make_autocast,
    make_update,
)

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


@pytest.mark.parametrize(
    "kw",
    [
        dict(optimizer="xsam"),
        # an MLP: float16 convolutions are slow on a CPU (seconds per batch)
        dict(optimizer="sgd", amp="fp16", model="mlp", width=64, depth=1),
        dict(optimizer="sam"),
    ],
)
def test_run_state_round_trips_through_checkpoint(kw):
    cfg = config(**kw)
    state, test = state_of(cfg)
    update = make_update(state, make_autocast(cfg.amp, CPU))
    state.metrics.append(run_epoch(state, update, 0, eval_loaders={"test": test}))
    ckpt = through_disk(state.checkpoint())
    assert ckpt["epoch"] == 1 and ckpt["scheduler"]["step"] == state.global_step == 7
    fresh, _ = state_of(cfg)
    assert not same(fresh.checkpoint()["model"], ckpt["model"])
    fresh.restore(ckpt)
    assert same(fresh.checkpoint(), ckpt)  # every entry, the RNG states included
    # and both go on identically
    rows, weights = [], []
    for s in (state, fresh):
        set_rng_state(ckpt["rng"])
        u = make_update(s, make_autocast(cfg.amp, CPU))
        rows.append(without_times([run_epoch(s, u, 1, eval_loaders={"test": test})]))
        weights.append(s.model.state_dict())
    assert rows[0] == rows[1] and same(weights[0], weights[1])


def test_restore_refuses_another_data_set():
    state, _ = state_of(config())
    ckpt = through_disk(state.checkpoint())
    other, _ = state_of(config(), synthetic(210, 50))
    with pytest.raises(ConfigError, match="data set differs"):
        other.restore(ckpt)


def test_restore_refuses_another_schedule_or_a_torn_checkpoint():
    state, _ = state_of(config())
    ckpt = through_disk(state.checkpoint())
    fresh, _ = state_of(config())
    fresh.schedule = LRSchedule("cosine", 99, 0, [0.05])  # e.g. another count of updates
    with pytest.raises(ConfigError, match="another learning-rate schedule"):
        fresh.restore(ckpt)
    with pytest.raises(ConfigError, match=r"another config \(lr: 0.05 -> 0.1\)"):
        state_of(config(lr=0.1))[0].restore(ckpt)
    ckpt["epoch"] = 3
    with pytest.raises(ConfigError, match="at epoch 3 but holds 0 rows of metrics"):
        state.restore(ckpt)


# ---------------------------------------------------------- resume refusals in whole runs
# 256 training and 128 test images of the embedded sample, batch 64: 4 updates per epoch.
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=1, threads=1)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    """A last.pt copied in from another run, or a config.json edited after the run started,
    used to be resumed silently: the weights of one run continued under another's config."""
    a, b = tmp_path / "a", tmp_path / "b"
    config = tiny(optimizer="sgd", epochs=2, out=str(a))
    train(config, stop_after=1)
    train(config.replace(lr=0.1, out=str(b)), stop_after=1)
    saved = (a / "last.pt").read_bytes()
    (a / "last.pt").write_bytes((b / "last.pt").read_bytes())
    with pytest.raises(ConfigError, match=r"last.pt was written by a run with another config"):
        train(config, resume=True)
    with pytest.raises(ConfigError, match=r"lr: 0.1 -> 0.05"):
        train(config, resume=True)
    (a / "last.pt").write_bytes(saved)
    # config.json edited to run longer: the checkpoint (and its schedule) says otherwise
    edited = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**edited, "epochs": 3}))
    with pytest.raises(ConfigError, match=r"another config \(epochs: 2 -> 3\)"):
        train(config.replace(epochs=3), resume=True)
    (a / "config.json").write_text(json.dumps(edited))
    assert train(config, resume=True)["resumed_from"] == 1  # the run itself resumes


def test_resume_refuses_another_number_of_processes(tmp_path):
    """A run started under torchrun with 2 processes and resumed with 1 (or the other way)
    continued silently with other data shards."""
    from xsam.train.checkpoint import atomic_save, load_checkpoint

    out = tmp_path / "run"
    config = tiny(optimizer="sgd", epochs=2, out=str(out))
    train(config, stop_after=1)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["processes"] == 1
    atomic_save({**ckpt, "processes": 2}, out / "last.pt")
    with pytest.raises(ConfigError, match=r"ran on 2 process\(es\), this run on 1"):
        train(config, resume=True)
    atomic_save(ckpt, out / "last.pt")
    assert train(config, resume=True)["resumed_from"] == 1
