"""Label noise in the toolkit: reproducible, independent of the run seed, never on the test
labels, recorded in the run folder, refused by resume when changed, memorisation logged."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from xsam.data import BatchLoader, load_dataset, noisy_labels
from xsam.train import ConfigError, TrainConfig, train
from xsam.train.epoch import memorisation_metrics
from xsam.train.loop import data_fingerprint, select_examples

TINY = dict(limit_train=300, limit_test=100, batch_size=100, epochs=2, threads=1)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw}).validated()


@pytest.fixture(scope="module")
def sample():
    return load_dataset("fashion-mnist-sample")


def test_noise_hits_train_and_validation_labels_exactly_and_never_the_test_labels(sample):
    clean = select_examples(cfg(val_size=200), sample)
    ex = select_examples(cfg(val_size=200, label_noise=0.4, seed=5), sample)
    assert torch.equal(ex.train_clean_y, clean.train_y)
    assert torch.equal(ex.train_x, clean.train_x) and torch.equal(ex.val_x, clean.val_x)
    assert int((ex.train_y != clean.train_y).sum()) == 120  # 40% of 300, exactly
    assert int((ex.val_y != clean.val_y).sum()) == 80  # 40% of 200
    assert torch.equal(ex.test_y, clean.test_y)
    # the noise's own seed: the same for every run seed and optimizer, another noise_seed differs
    other = select_examples(cfg(val_size=200, label_noise=0.4, seed=9, optimizer="sgd"), sample)
    assert torch.equal(other.train_y, ex.train_y) and torch.equal(other.val_y, ex.val_y)
    third = select_examples(cfg(val_size=200, label_noise=0.4, noise_seed=1), sample)
    assert not torch.equal(third.train_y, ex.train_y)
    expected = noisy_labels(clean.train_y, 0.4, num_classes=10, seed=0)
    assert torch.equal(ex.train_y, expected)


def test_pair_noise_flips_to_the_next_class(sample):
    clean = select_examples(cfg(), sample)
    ex = select_examples(cfg(label_noise=0.2, noise_type="pair"), sample)
    flipped = ex.train_y != clean.train_y
    assert int(flipped.sum()) == 60
    assert torch.equal(ex.train_y[flipped], (clean.train_y[flipped] + 1) % 10)


def test_fingerprint_includes_the_noise_only_when_there_is_noise(sample):
    assert data_fingerprint(cfg(), sample) == sample.fingerprint()
    a = data_fingerprint(cfg(label_noise=0.4), sample)
    assert a != sample.fingerprint()
    assert a != data_fingerprint(cfg(label_noise=0.2), sample)
    assert a != data_fingerprint(cfg(label_noise=0.4, noise_type="pair"), sample)
    assert a != data_fingerprint(cfg(label_noise=0.4, noise_seed=3), sample)


@pytest.mark.parametrize("bad, message", [(1.0, r"\[0, 1\)"), (-0.1, ">= 0"), ("x", "number")])
def test_invalid_noise_is_named(bad, message):
    with pytest.raises(ConfigError, match=f"label_noise.*{message}"):
        cfg(label_noise=bad)
    with pytest.raises(ConfigError, match="noise_type"):
        cfg(noise_type="asymmetric")


def test_memorisation_metrics_closed_form():
    """A model that predicts the noisy label on the first 3 flipped examples and the clean
    label everywhere else."""
    clean = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    noisy = torch.tensor([1, 1, 0, 2, 1, 0, 0, 2])  # flipped: 0, 2, 3, 5, 7
    pred = torch.tensor([1, 1, 0, 2, 1, 2, 0, 1])  # memorises 0, 2, 3; not 5, 7
    x = torch.arange(8, dtype=torch.float32)[:, None, None, None]

    class Lookup(nn.Module):
        def forward(self, inp):
            return nn.functional.one_hot(pred[inp.flatten().round().long()], 3).float()

    loader = BatchLoader(x.to(torch.uint8), noisy, 3, shuffle=False, mean=(0.0,), std=(1 / 255,))
    out = memorisation_metrics(Lookup(), loader, clean)
    assert out["train_acc_noisy"] == pytest.approx(6 / 8)
    assert out["train_acc_clean"] == pytest.approx(5 / 8)
    assert out["memorized"] == pytest.approx(3 / 5)
    assert memorisation_metrics(Lookup(), None, None) == dict.fromkeys(out)


def test_noisy_run_records_the_noise_and_resume_refuses_a_change(tmp_path):
    out = tmp_path / "run"
    c = cfg(model="mlp", width=32, depth=1, label_noise=0.4, val_size=100, out=str(out))
    first = train(c, stop_after=1)
    row = first["metrics"][0]
    assert 0 <= row["memorized"] <= 1 and row["train_acc_noisy"] is not None
    info = json.loads((out / "run.json").read_text())
    assert info["label_noise"]["rate"] == 0.4 and info["label_noise"]["flipped_train"] == 0.4
    assert json.loads((out / "config.json").read_text())["label_noise"] == 0.4
    assert "memorized" in (out / "metrics.csv").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="label_noise: 0.4 -> 0.2"):
        train(c.replace(label_noise=0.2), resume=True)
    with pytest.raises(ConfigError, match="noise_seed: 0 -> 1"):
        train(c.replace(noise_seed=1), resume=True)
    # an edited config.json does not get past the data fingerprint either
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "noise_seed": 7}))
    with pytest.raises(ConfigError, match="differ"):
        train(c.replace(noise_seed=7), resume=True)
    (out / "config.json").write_text(json.dumps(saved))
    done = train(c, resume=True)
    assert done["epochs_done"] == 2 and done["resumed_from"] == 1


def test_mlp_width_and_depth_reach_the_model():
    result = train(cfg(model="mlp", width=8, depth=3, epochs=1))
    linears = [m for m in result["model"].modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [8, 8, 8, 10]
