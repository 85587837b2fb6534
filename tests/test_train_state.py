"""Building a run (``xsam.train.loop``, ``xsam.train.state``): the examples it trains, validates
and tests on (``select_examples``), its loaders sharding the global batch (``make_loaders``),
and the learning-rate schedule set on every param group."""

from __future__ import annotations

import pytest
import torch
from toy_run import CPU, config, ids, state_of, synthetic

from xsam.train import ConfigError
from xsam.train.loop import VAL_SEED, balanced_subset, make_loaders, select_examples
from xsam.train.process_group import Ranks
from xsam.train.state import LRSchedule, lr_factor


def test_select_examples_gives_the_documented_split_sizes():
    data = synthetic(200, 50)
    ex = select_examples(config(val_size=40, limit_train=100, limit_test=30), data)
    assert (len(ex.train_y), len(ex.val_y), len(ex.test_y)) == (100, 40, 30)
    # the validation split: the fixed balanced subset of the whole training set
    val_idx = balanced_subset(data.train_y, 40, seed=VAL_SEED)
    assert ids(ex.val_x) == val_idx.tolist() and torch.equal(ex.val_y, data.train_y[val_idx])
    assert torch.bincount(ex.val_y, minlength=10).tolist() == [4] * 10
    assert not set(ids(ex.train_x)) & set(ids(ex.val_x))  # never trained on
    assert torch.equal(ex.train_y, data.train_y[ids(ex.train_x)])  # labels stay with images
    # limit_train applies after the split: min(limit_train, N - val_size)
    ex = select_examples(config(val_size=40, limit_train=1000), data)
    assert len(ex.train_y) == 160 and sorted(ids(ex.train_x) + ids(ex.val_x)) == list(range(200))
    ex = select_examples(config(), data)
    assert (len(ex.train_y), ex.val_x, ex.val_y, len(ex.test_y)) == (200, None, None, 50)
    with pytest.raises(ConfigError, match="val_size should be < the 200 training examples"):
        select_examples(config(val_size=200), data)


def test_make_loaders_shards_the_global_batch():
    cfg = config(val_size=40, batch_size=32, eval_batch_size=25)
    data = synthetic(200, 50)
    ex = select_examples(cfg, data)
    one = make_loaders(cfg, data, ex, CPU, Ranks())
    assert one.train_examples == 160 and len(one.train) == 5 and one.train.batch_size == 32
    assert (one.test.batch_size, one.val.batch_size) == (25, 25)
    assert not one.test.shuffle and not one.val.shuffle and one.train.shuffle
    assert one.fingerprint == data.fingerprint()
    two = make_loaders(cfg, data, ex, CPU, Ranks(rank=1, world=2))
    assert two.train.batch_size == 16 and (two.train.rank, two.train.world_size) == (1, 2)
    assert two.train_examples == 160 and len(two.train) == 5  # the same number of updates


def test_lr_schedule_sets_every_group():
    cfg = config(epochs=2, warmup_epochs=1.0, lr=0.2)
    state, _ = state_of(cfg)
    s = state.schedule
    assert (s.kind, s.total_steps, s.warmup_steps, s.base_lrs) == ("cosine", 14, 7, [0.2])
    for step in (0, 6, 7, 13):
        s.apply(state.opt, step)
        assert state.opt.param_groups[0]["lr"] == 0.2 * lr_factor(step, 14, "cosine", 7)
        assert s.lr(step) == state.opt.param_groups[0]["lr"]
    assert LRSchedule("constant", 10, 0, [1.0, 2.0]).state_dict(3) == {
        "schedule": "constant",
        "step": 3,
        "total_steps": 10,
        "warmup_steps": 0,
        "base_lrs": [1.0, 2.0],
    }


def test_ranks_alias_reexports_process_group():
    """``xsam.train.ranks`` (the module's former name) re-exports ``xsam.train.process_group``:
    the same objects under the same names."""
    import xsam.train.process_group as process_group
    import xsam.train.ranks as ranks

    assert ranks.__all__ == process_group.__all__
    for name in process_group.__all__:
        assert getattr(ranks, name) is getattr(process_group, name)
