"""The training loop's pieces, each on its own: data selection and loaders, the run state's
checkpoint/restore, the learning-rate schedule, each kind of update, the epoch totals."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch

from xsam.data import BatchLoader, ImageDataset
from xsam.train import ConfigError, TrainConfig, without_times
from xsam.train.checkpoint import set_rng_state
from xsam.train.epoch import EpochTotals, run_epoch
from xsam.train.loop import VAL_SEED, balanced_subset, make_loaders, select_examples
from xsam.train.ranks import Ranks
from xsam.train.state import LRSchedule, RunState, build_run_state, lr_factor
from xsam.train.updates import (
    PlainUpdate,
    SAMAmpUpdate,
    SAMClosureUpdate,
    UpdateResult,
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


# ---------------------------------------------------------------------- data
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


# ---------------------------------------------------------------------- the run state
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


# ---------------------------------------------------------------------- updates
@pytest.mark.parametrize(
    "kw, kind",
    [
        (dict(optimizer="sgd"), PlainUpdate),
        (dict(optimizer="sgd", amp="bf16"), PlainUpdate),
        (dict(optimizer="sam"), SAMClosureUpdate),
        (dict(optimizer="xsam"), SAMClosureUpdate),
        (dict(optimizer="sam", amp="fp16"), SAMAmpUpdate),
        (dict(optimizer="xsam", amp="bf16"), SAMAmpUpdate),
    ],
)
def test_make_update_picks_the_kind(kw, kind):
    state, _ = state_of(config(**kw))
    assert type(make_update(state, make_autocast(state.config.amp, CPU))) is kind


def batch(state: RunState) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(state.loader))


def weights_and_state(state: RunState) -> tuple[dict, dict]:
    """Copies of the parameters and the optimizer's state_dict."""
    return copy.deepcopy((dict(state.model.named_parameters()), state.opt.state_dict()))


def test_plain_update_is_one_base_step_and_skips_non_finite():
    state, _ = state_of(config(optimizer="sgd"))
    x, y = batch(state)
    ref = copy.deepcopy(state.model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    out = ref(x)
    loss = torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    ref_opt.step()
    result = make_update(state, contextlib.nullcontext)(x, y)
    assert isinstance(result, UpdateResult) and not result.skipped
    assert torch.equal(result.logits, out.detach()) and torch.equal(result.loss, loss.detach())
    assert result.stats["g0_norm"] == pytest.approx(float(norm), rel=1e-6)
    assert same(state.model.state_dict(), ref.state_dict())
    # a non-finite batch: skipped, nothing moves
    before = weights_and_state(state)
    result = make_update(state, contextlib.nullcontext)(torch.full_like(x, math.nan), y)
    assert result.skipped and math.isnan(result.stats["g0_norm"])
    assert same(weights_and_state(state), before)


@pytest.mark.parametrize("optimizer", ["sam", "xsam"])
def test_sam_closure_and_lower_level_updates_agree(optimizer):
    """Without autocast, the lower-level path (used under AMP) computes the closure path's
    update bit for bit."""
    a, _ = state_of(config(optimizer=optimizer))
    b, _ = state_of(config(optimizer=optimizer))
    x, y = batch(a)
    for s in (a, b):
        if optimizer == "xsam":
            s.opt.request_alpha_search()
    criterion = torch.nn.CrossEntropyLoss()
    ra = SAMClosureUpdate(a, criterion, contextlib.nullcontext)(x, y)
    rb = SAMAmpUpdate(b, criterion, contextlib.nullcontext)(x, y)
    assert same(a.model.state_dict(), b.model.state_dict())
    assert same(a.opt.state_dict(), b.opt.state_dict())
    assert torch.equal(ra.loss, rb.loss) and torch.equal(ra.logits, rb.logits)
    assert ra.stats == rb.stats and set(ra.stats) >= {"g0_norm", "gk_norm"}
    assert ra.alpha_searched == rb.alpha_searched == (optimizer == "xsam")
    assert not ra.skipped and not rb.skipped


# ---------------------------------------------------------------------- epoch totals
def test_epoch_totals_sum_and_average_finite_statistics():
    t = EpochTotals.zeros(CPU)
    y = torch.tensor([0, 1, 2, 3])
    logits = torch.eye(4)[[0, 1, 0, 0]]  # 2 of 4 right
    t.add(UpdateResult(torch.tensor(1.0), logits, {"g0_norm": 2.0}), y)
    t.add(UpdateResult(torch.tensor(3.0), logits[:2], {"g0_norm": math.nan}, True, True), y[:2])
    t.reduce(Ranks())
    assert (float(t.loss_sum), int(t.correct), t.seen, t.searches) == (10.0, 4, 6, 1)
    assert t.mean("g0_norm") == 2.0 and t.mean("psi") is None
