"""A run's checkpoint and its resume: the run state round-trips through a checkpoint bit for bit;
restoring refuses another data set, another schedule or a torn checkpoint; resuming refuses a
checkpoint of another run (or a config edited since) and another number of processes."""

from __future__ import annotations

import json

import pytest
from toy_run import CPU, config, same, state_of, synthetic, through_disk, tiny

from xsam.train import ConfigError, train, without_times
from xsam.train.checkpoint import set_rng_state
from xsam.train.epoch import run_epoch
from xsam.train.state import LRSchedule
from xsam.train.updates import (
    make_autocast,
    make_update,
)


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
