"""Tests for xsam.train: schedule, subsets, config and presets, the loop, resume, compare."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F

import xsam
from xsam.train import (
    METRIC_KEYS,
    PRESETS,
    TIME_KEYS,
    ConfigError,
    TrainConfig,
    balanced_subset,
    load_checkpoint,
    lr_factor,
    read_metrics,
    resolve_config,
    run_status,
    train,
    without_times,
)
from xsam.train import checkpoint as ckpt_mod
from xsam.train import compare as cmp
from xsam.train.cli import DEMO_EPOCHS, DEMO_PRESET, demo_plan
from xsam.train.config import PAPER_ALPHA_GRID

# 256 training and 128 test images of the embedded sample, batch 64: 4 updates per epoch.
TINY = dict(limit_train=256, limit_test=128, batch_size=64, epochs=2, threads=1)


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


# ---------------------------------------------------------------------- pure helpers
def test_lr_factor_closed_form():
    T = 100
    assert lr_factor(0, T) == 1.0
    assert lr_factor(50, T) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(25, T) == pytest.approx((1 + math.cos(math.pi / 4)) / 2, abs=1e-15)
    assert lr_factor(99, T) == pytest.approx((1 + math.cos(math.pi * 0.99)) / 2, abs=1e-15)
    assert lr_factor(T, T) == pytest.approx(0.0, abs=1e-15)
    assert all(lr_factor(s, T, "constant") == 1.0 for s in range(T))
    # warm-up: (s + 1) / w, then cosine over the remaining T - w updates
    assert [lr_factor(s, T, "cosine", 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, T, "cosine", 4) == 1.0
    assert lr_factor(52, T, "cosine", 4) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(2, T, "constant", 4) == 0.75
    factors = [lr_factor(s, T) for s in range(T)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, T, "linear")


def test_balanced_subset_is_balanced_nested_and_deterministic():
    y = torch.arange(10).repeat_interleave(torch.arange(20, 30))  # unequal class sizes
    a = balanced_subset(y, 55)
    assert len(a) == 55 and torch.equal(a, a.sort().values) and len(set(a.tolist())) == 55
    counts = torch.bincount(y[a], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 55
    assert torch.equal(a, balanced_subset(y, 55))
    assert set(balanced_subset(y, 30).tolist()) <= set(a.tolist())
    assert torch.equal(balanced_subset(y, 10_000), torch.arange(len(y)))


# ---------------------------------------------------------------------- config and presets
def test_config_json_round_trip(tmp_path):
    c = TrainConfig(optimizer="sam", rho=0.05, alpha_grid=[0.0, 0.5], alpha_every=7, out="x")
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c
    v = c.validated()
    assert v.validated() == v
    path = tmp_path / "c.json"
    path.write_text(v.to_json())
    assert TrainConfig.from_json(path) == v
    # partial dicts fill in defaults; CLI-style strings are parsed
    assert TrainConfig.from_dict({"lr": "0.1", "alpha": "0.5", "alpha-every": "epoch"}) == (
        TrainConfig(lr=0.1, alpha=0.5, alpha_every=None)
    )
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        TrainConfig.from_dict({"lrr": 1})


def test_validated_resolves_defaults_and_names():
    v = TrainConfig(dataset="Fashion_MNIST_sample", model="SMALL_CNN", rho=0.1).validated()
    assert (v.dataset, v.model) == ("fashion-mnist-sample", "small_cnn")
    assert v.rho_max == pytest.approx(0.2)  # 2·rho
    assert v.alpha_grid == list(PAPER_ALPHA_GRID) and len(v.alpha_grid) == 21
    assert TrainConfig(alpha=1.0, alpha_grid=[0.0, 1.0]).validated().alpha_grid is None
    grid = TrainConfig(alpha_grid="0:1:0.25").validated().alpha_grid
    assert grid == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("dataset", "imagenet", "unknown dataset 'imagenet'"),
        ("model", "resnet9", "unknown model 'resnet9'"),
        ("optimizer", "adam", "unknown optimizer 'adam'"),
        ("lr", 0.0, "lr should be > 0"),
        ("rho", -1.0, "rho should be >= 0"),
        ("momentum", 1.0, "momentum should be in [0, 1)"),
        ("steps", 0, "steps should be >= 1"),
        ("epochs", 2.5, "epochs should be an integer"),
        ("alpha", "max", "alpha should be 'auto' or a number"),
        ("alpha_every", 0, "alpha_every should be >= 1"),
        ("augment", "rotate", "cannot read 'rotate'"),
        ("device", "tpu", "unknown device 'tpu'"),
        ("amp", "fp8", "unknown amp 'fp8'"),
        ("warmup_epochs", 20.0, "warmup_epochs should be <= epochs"),
    ],
)
def test_invalid_config_values_are_named(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**{field: value}).validated()


def test_presets_paper_values_and_overrides():
    names = {
        f"{d}-{m}"
        for d in ("cifar10", "cifar100")
        for m in ("resnet18", "vgg11bn", "densenet121", "resnet50")
    } | {"tinyimagenet-resnet18", "fmnist-sample-cnn", "fmnist-resnet20"}
    names |= {"fmnist-noise-mlp", "fmnist-sample-noise-mlp", "mnist-noise-mlp", "fmnist-noise-cnn"}
    names |= {"fmnist-noise-vit"}
    assert names == set(PRESETS)
    mnist = resolve_config("mnist-noise-mlp").validated()
    assert (mnist.dataset, mnist.model, mnist.label_noise, mnist.augment) == (
        "mnist", "mlp", 0.4, "none"
    )  # fmt: skip
    cnn = resolve_config("fmnist-noise-cnn").validated()
    assert (cnn.model, cnn.label_noise, cnn.augment, cnn.epochs) == ("plain_cnn", 0.4, "none", 20)
    noisy = resolve_config("fmnist-noise-mlp").validated()
    assert (noisy.label_noise, noisy.model, noisy.limit_train, noisy.val_size) == (
        0.4, "mlp", 10_000, 5_000
    )  # fmt: skip
    assert (noisy.weight_decay, noisy.augment, noisy.epochs) == (0.0, "flip", 30)
    for name in PRESETS:
        assert resolve_config(name).validated().preset == name
    c = resolve_config("cifar100-vgg11bn").validated()
    paper = dict(
        dataset="cifar100", model="vgg11_bn", optimizer="xsam", base="sgd", lr=0.05,
        momentum=0.9, weight_decay=1e-3, schedule="cosine", epochs=200, batch_size=125,
        rho=0.15, rho_max=0.30, steps=1, alpha="auto", alpha_every=None,
        alpha_grid=list(PAPER_ALPHA_GRID), augment="paper",
    )  # fmt: skip
    assert {k: getattr(c, k) for k in paper} == paper
    aug = c.augmentation
    assert (aug.crop_padding, aug.flip, aug.cutout_size, aug.cutout_p) == (4, True, 16, 0.5)
    assert resolve_config("tinyimagenet-resnet18").validated().dataset == "tiny-imagenet"
    # overrides win over the preset; the rest stays
    o = resolve_config("cifar10-resnet18", {"lr": "0.1", "optimizer": "sam", "seed": 3})
    o = o.validated()
    assert (o.lr, o.optimizer, o.seed, o.epochs, o.rho) == (0.1, "sam", 3, 200, 0.15)
    with pytest.raises(ConfigError, match="unknown preset 'cifar10'"):
        resolve_config("cifar10")


def test_default_config_is_the_cpu_preset():
    assert resolve_config("fmnist-sample-cnn").validated().replace(preset=None) == (
        TrainConfig().validated()
    )


# ---------------------------------------------------------------------- the loop
def _check_metrics(result, config):
    ms = result["metrics"]
    n_train, n_test = config.limit_train, config.limit_test
    assert [m["epoch"] for m in ms] == list(range(1, config.epochs + 1))
    steps = math.ceil(n_train / config.batch_size)
    for m in ms:
        assert set(m) == set(METRIC_KEYS)
        assert 0 <= m["train_acc"] <= 1 and (m["train_acc"] * n_train).is_integer()
        assert 0 <= m["test_acc"] <= 1 and (m["test_acc"] * n_test).is_integer()
        assert math.isfinite(m["train_loss"]) and math.isfinite(m["test_loss"])
        assert m["g0_norm"] > 0 and m["skipped_updates"] == 0
        assert m["lr"] == pytest.approx(config.lr * lr_factor((m["epoch"] - 1) * steps, 2 * steps))
        assert m["images_per_s"] > 0 and m["wall_s"] >= m["epoch_time_s"] > 0
    assert ms[1]["train_loss"] < ms[0]["train_loss"]  # it learns
    assert ms[0]["train_loss"] == pytest.approx(math.log(10), abs=0.2)
    assert result["final_test_acc"] == ms[-1]["test_acc"]
    assert result["best_test_acc"] == max(m["test_acc"] for m in ms)


@pytest.mark.parametrize("optimizer", ["sgd", "sam", "xsam"])
def test_train_tiny_each_optimizer(optimizer):
    config = tiny(optimizer=optimizer)
    result = train(config)
    assert result["complete"] and result["out"] is None and result["epochs_done"] == 2
    _check_metrics(result, config)
    ms = result["metrics"]
    if optimizer == "sgd":
        assert all(m["alpha"] is None and m["psi"] is None and m["gk_norm"] is None for m in ms)
    else:
        assert all(m["gk_norm"] > 0 for m in ms)
    if optimizer == "xsam":
        assert all(m["alpha"] in PAPER_ALPHA_GRID for m in ms)
        assert all(0 < m["psi"] < math.pi for m in ms)
        assert [m["alpha_searches"] for m in ms] == [1, 1]
    else:
        assert all(m["alpha_searches"] is None for m in ms)
    assert isinstance(result["model"], torch.nn.Module)


def test_validation_split_is_held_out_balanced_and_evaluated(monkeypatch):
    from xsam.data import load_dataset
    from xsam.train import loop

    seen = []  # the (x, y, shuffle) of every loader the run builds
    real = loop.BatchLoader

    def recording(x, y, *args, **kw):
        seen.append((x, y, kw.get("shuffle")))
        return real(x, y, *args, **kw)

    monkeypatch.setattr(loop, "BatchLoader", recording)
    # the split is under test, not the model: a small MLP over the 9,800 training images
    config = tiny(optimizer="sgd", val_size=200, limit_train=None, epochs=1, model="mlp",
                  width=16, depth=1)  # fmt: skip
    result = train(config)
    data = load_dataset(config.dataset)
    [(tx, ty, _)] = [s for s in seen if s[2]]  # the one shuffled loader: training
    [(vx, vy, _)] = [s for s in seen if not s[2] and len(s[1]) == 200]  # validation
    n = len(data.train_y)
    assert len(ty) == n - 200 and len(vy) == 200
    idx = balanced_subset(data.train_y, 200, seed=loop.VAL_SEED)
    assert torch.equal(vx, data.train_x[idx]) and torch.equal(vy, data.train_y[idx])
    assert torch.bincount(vy, minlength=10).tolist() == [20] * 10
    # the training set is the rest: the class counts add up to the full set's
    assert torch.equal(
        torch.bincount(ty, minlength=10) + torch.bincount(vy, minlength=10),
        torch.bincount(data.train_y, minlength=10),
    )
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(tx, data.train_x[keep])
    # val_acc is the returned model's accuracy on those examples (independent evaluation)
    model = result["model"].eval()
    with torch.no_grad():
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
        logits = model((vx.float() / 255.0 - mean) / std)
    m = result["metrics"][-1]
    assert m["val_acc"] == int((logits.argmax(1) == vy).sum()) / 200
    assert m["val_loss"] == pytest.approx(F.cross_entropy(logits, vy).item(), rel=1e-5)
    assert result["final_val_acc"] == m["val_acc"]
    assert train(tiny(optimizer="sgd", epochs=1))["metrics"][-1]["val_acc"] is None
    with pytest.raises(ConfigError, match="val_size should be < the 10000 training examples"):
        train(tiny(val_size=10_000))


def test_train_is_deterministic_and_seed_matters():
    a = train(tiny(optimizer="sam", epochs=1))
    b = train(tiny(optimizer="sam", epochs=1))
    c = train(tiny(optimizer="sam", epochs=1, seed=1))
    assert without_times(a["metrics"]) == without_times(b["metrics"])
    for p, q in zip(a["model"].state_dict().values(), b["model"].state_dict().values()):
        assert torch.equal(p, q)
    assert without_times(a["metrics"]) != without_times(c["metrics"])


def test_alpha_searched_exactly_once_per_epoch(monkeypatch):
    calls = []
    search = xsam.XSAM._search

    def counting(self, *args, **kwargs):
        calls.append(self.updates)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(xsam.XSAM, "_search", counting)
    result = train(tiny(epochs=3))
    assert calls == [0, 4, 8]  # the first update of every epoch (4 updates per epoch)
    assert [m["alpha_searches"] for m in result["metrics"]] == [1, 1, 1]
    calls.clear()
    result = train(tiny(epochs=2, alpha_every=3))
    assert calls == [0, 3, 6]
    assert [m["alpha_searches"] for m in result["metrics"]] == [2, 1]


def test_fixed_alpha_one_is_sam():
    a = train(tiny(optimizer="sam", epochs=1))
    b = train(tiny(optimizer="xsam", alpha=1.0, epochs=1))
    for p, q in zip(a["model"].parameters(), b["model"].parameters()):
        assert torch.equal(p, q)
    assert b["metrics"][0]["alpha"] == 1.0 and b["metrics"][0]["alpha_searches"] == 0


def test_low_level_amp_path_bf16():
    config = tiny(optimizer="xsam", amp="bf16")
    result = train(config)
    _check_metrics(result, config)
    assert [m["alpha_searches"] for m in result["metrics"]] == [1, 1]


def test_adamw_base_and_warmup_run():
    config = tiny(optimizer="sam", base="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=1)
    ms = train(config)["metrics"]
    assert [m["lr"] for m in ms] == [pytest.approx(1e-3 / 4), pytest.approx(1e-3)]


# ---------------------------------------------------------------------- run folders and resume
def test_run_folder_contents(tmp_path):
    out = tmp_path / "run"
    config = tiny(optimizer="xsam", out=str(out))
    result = train(config)
    assert json.loads((out / "config.json").read_text()) == config.validated().to_dict()
    assert read_metrics(out) == result["metrics"]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRIC_KEYS) and len(lines) == 3
    assert float(lines[2].split(",")[METRIC_KEYS.index("test_acc")]) == result["final_test_acc"]
    info = json.loads((out / "run.json").read_text())
    assert info["train_examples"] == 256 and info["parameters"] == 94_186  # small_cnn, 1 channel in
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["metrics"] == result["metrics"]
    assert ckpt["loader"]["epoch"] == 2 and ckpt["scheduler"]["step"] == 8
    assert ckpt["optimizer"]["sam_family"]["updates"] == 8
    assert {"torch", "numpy", "python"} <= set(ckpt["rng"])
    for k, v in result["model"].state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    assert run_status(out)[0] == "complete"
    assert set(without_times(result["metrics"])[0]) == set(METRIC_KEYS) - TIME_KEYS
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("optimizer", ["sam", "xsam"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    kw = dict(optimizer=optimizer, augment="crop2+flip+cutout8@0.5")
    full = train(tiny(out=str(tmp_path / "full"), **kw))
    part = train(tiny(out=str(tmp_path / "part"), **kw), stop_after=1)
    assert not part["complete"] and part["epochs_done"] == 1
    assert run_status(tmp_path / "part")[0] == "partial"
    resumed = train(tiny(out=str(tmp_path / "part"), **kw), resume=True)
    assert resumed["resumed_from"] == 1 and resumed["complete"]
    assert without_times(resumed["metrics"]) == without_times(full["metrics"])
    assert read_metrics(tmp_path / "part") == resumed["metrics"]
    a, b = load_checkpoint(tmp_path / "full/last.pt"), load_checkpoint(tmp_path / "part/last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s["momentum_buffer"], t["momentum_buffer"])
    assert a["optimizer"]["sam_family"] == b["optimizer"]["sam_family"]
    assert a["loader"]["epoch"] == b["loader"]["epoch"] == 2
    # a complete run is only read back
    again = train(tiny(out=str(tmp_path / "part"), **kw), resume=True)
    assert again["model"] is None and again["metrics"] == resumed["metrics"]


def test_existing_run_is_never_overwritten_without_force(tmp_path):
    out = tmp_path / "run"
    config = tiny(optimizer="sgd", epochs=1, out=str(out))
    first = train(config)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--force"):
        train(config)
    with pytest.raises(ConfigError, match="config differs.*lr: 0.05 -> 0.1"):
        train(config.replace(lr=0.1), resume=True)
    assert (out / "last.pt").read_bytes() == before
    second = train(config.replace(lr=0.1), force=True)
    assert second["metrics"] != first["metrics"]
    assert json.loads((out / "config.json").read_text())["lr"] == 0.1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no run"):
        train(config.replace(out=str(tmp_path / "other")))


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_mod.atomic_save({"epoch": 1, "model": {}}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        ckpt_mod.atomic_save({"epoch": 2, "model": {}}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read checkpoint"):
        load_checkpoint(path)


# ---------------------------------------------------------------------- compare
def _fake_run(root, name, label_cfg, accs, walls, alphas=None, epochs=None, vals=None):
    run = root / name
    run.mkdir(parents=True)
    config = TrainConfig(epochs=epochs or len(accs), **label_cfg)
    (run / "config.json").write_text(config.to_json())
    rows = [
        {
            "epoch": i + 1,
            "test_acc": a,
            "val_acc": vals[i] if vals else None,
            "wall_s": w,
            "alpha": alphas[i] if alphas else None,
        }
        for i, (a, w) in enumerate(zip(accs, walls))
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_aggregation_math(tmp_path):
    runs = []
    _fake_run(tmp_path, "sgd-seed0", {"optimizer": "sgd"}, [0.5, 0.80], [1.0, 10.0])
    _fake_run(tmp_path, "sgd-seed1", {"optimizer": "sgd"}, [0.9, 0.84], [1.0, 14.0])
    _fake_run(tmp_path, "xsam-seed0", {}, [0.6, 0.85], [2, 20.0], alphas=[0.5, 0.7])
    _fake_run(tmp_path, "xsam-seed1", {}, [0.6], [2.0], alphas=[0.5], epochs=2)  # incomplete
    runs = [("sgd", 0, "sgd-seed0"), ("sgd", 1, "sgd-seed1")]
    runs += [("xsam", 0, "xsam-seed0"), ("xsam", 1, "xsam-seed1")]
    manifest = {"runs": [{"label": lb, "seed": s, "dir": d} for lb, s, d in runs]}
    (tmp_path / "compare.json").write_text(json.dumps(manifest))
    rows = cmp.aggregate(cmp.load_runs(tmp_path))
    sgd, xs = rows
    assert (sgd["label"], sgd["n"], sgd["planned"], xs["n"], xs["planned"]) == ("sgd", 2, 2, 1, 2)
    assert sgd["final_acc"][0] == pytest.approx(82.0)
    assert sgd["final_acc"][1] == pytest.approx(math.sqrt(8.0))  # sample std of 80, 84
    assert sgd["best_acc"] == (pytest.approx(85.0), pytest.approx(math.sqrt(50.0)))  # 80, 90
    assert sgd["wall_s"] == (pytest.approx(12.0), pytest.approx(math.sqrt(8.0)))
    assert sgd["alpha"] is None and xs["alpha"] == (0.7, 0.0)
    table = cmp.format_table(rows)
    assert "| sgd | 2 | 82.00 ± 2.83 | 85.00 ± 7.07 | – | 12.0 ± 2.8 |" in table
    assert "| xsam | 1 of 2 | 85.00 | 85.00 | 0.70 | 20.0 |" in table
    assert cmp.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(1.2909944487358056))
    files = cmp.plot_runs(cmp.load_runs(tmp_path), tmp_path)
    assert [f.name for f in files] == ["test_acc.png", "alpha.png"]
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files)


def test_compare_validation_column(tmp_path):
    _fake_run(tmp_path, "a0", {"optimizer": "sam", "rho": 0.01}, [0.8], [1.0], vals=[0.70])
    _fake_run(tmp_path, "a1", {"optimizer": "sam", "rho": 0.01}, [0.8], [1.0], vals=[0.74])
    _fake_run(tmp_path, "b0", {"optimizer": "sam", "rho": 0.1}, [0.9], [1.0], vals=[0.60])
    runs = [("sam:rho=0.01", 0, "a0"), ("sam:rho=0.01", 1, "a1"), ("sam:rho=0.1", 0, "b0")]
    manifest = {"runs": [{"label": lb, "seed": s, "dir": d} for lb, s, d in runs]}
    (tmp_path / "compare.json").write_text(json.dumps(manifest))
    a, b = cmp.aggregate(cmp.load_runs(tmp_path))
    assert a["final_val_acc"] == (pytest.approx(72.0), pytest.approx(math.sqrt(8.0)))
    assert b["final_val_acc"] == (pytest.approx(60.0), 0.0)
    table = cmp.format_table([a, b]).splitlines()
    assert table[0].startswith("| optimizer | runs | final val acc (%) | final test acc (%) |")
    assert (
        table[2]
        == "| sam:rho=0.01 | 2 | 72.00 ± 2.83 | 80.00 ± 0.00 | 80.00 ± 0.00 | – | 1.0 ± 0.0 |"
    )
    assert table[3] == "| sam:rho=0.1 | 1 | 60.00 | 90.00 | 90.00 | – | 1.0 |"
    # without validation sets the column is left out
    assert "val" not in cmp.format_table([{**a, "final_val_acc": None}])


def test_parse_variants_and_seeds():
    vs = cmp.parse_variants(["sgd", "sam:rho=0.05", "xsam:steps=2,alpha_every=10"])
    assert [v.label for v in vs] == ["sgd", "sam:rho=0.05", "xsam:steps=2,alpha_every=10"]
    assert [v.slug for v in vs] == ["sgd", "sam_rho0.05", "xsam_steps2_alpha_every10"]
    assert vs[1].overrides == {"optimizer": "sam", "rho": "0.05"}
    assert cmp.parse_seeds("0,1,2") == [0, 1, 2] and cmp.parse_seeds("3-5") == [3, 4, 5]
    for bad in (["adam"], ["sam:rho"], ["sam:rhoo=1"], ["sgd", "sgd"]):
        with pytest.raises(ConfigError):
            cmp.parse_variants(bad)
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(ConfigError):
            cmp.parse_seeds(bad)


def test_compare_skips_complete_and_resumes_partial_runs(tmp_path, monkeypatch):
    base = tiny(optimizer="sgd", limit_train=128, limit_test=64)
    variants = cmp.parse_variants(["sgd", "sgd:lr=0.1"])
    out = tmp_path / "cmp"
    plan = cmp.plan_runs(base, variants, [0], out)
    train(plan[0].config)  # complete
    train(plan[1].config, stop_after=1)  # stopped after epoch 1
    calls = []
    real = cmp.train

    def recording(config, **kw):
        result = real(config, **kw)
        calls.append((config.out, kw["resume"], result["resumed_from"]))
        return result

    monkeypatch.setattr(cmp, "train", recording)
    before = (out / "sgd-seed0" / "last.pt").stat().st_mtime_ns
    result = cmp.run_compare(base, variants, [0], out, plots=False)
    assert calls == [(str(out / "sgd_lr0.1-seed0"), True, 1)]
    assert (out / "sgd-seed0" / "last.pt").stat().st_mtime_ns == before
    assert [r["n"] for r in result["rows"]] == [1, 1]
    assert "| sgd:lr=0.1 | 1 |" in result["table"]
    assert "| sgd:lr=0.1 | 1 |" in (out / "results.md").read_text()
    calls.clear()
    cmp.run_compare(base, variants, [0], out, plots=False)  # all complete: nothing runs
    assert calls == []
    with pytest.raises(ConfigError, match="another config.*epochs: 2 -> 3"):
        cmp.run_compare(base.replace(epochs=3), variants, [0], out, plots=False)


def test_demo_plan():
    base, variants, seeds, out = demo_plan()
    c = base.validated()
    assert c.preset == DEMO_PRESET and c.dataset == "fashion-mnist-sample"
    assert c.model == "mlp" and c.label_noise == 0.4 and c.epochs == DEMO_EPOCHS
    assert c.steps == 1 and c.alpha == "auto" and c.alpha_every is None and c.limit_train is None
    assert [v.split(":")[0] for v in variants] == ["sgd", "sam", "xsam"] and seeds == [0]
    assert out.parent.name == "demo_runs" and not out.exists()
    plan = cmp.plan_runs(base, cmp.parse_variants(variants), seeds, out)
    assert [r.config.optimizer for r in plan] == ["sgd", "sam", "xsam"]
    assert demo_plan(epochs="2")[0].validated().epochs == 2
    assert demo_plan(seeds="0-2")[2] == [0, 1, 2]


def test_demo_caption_and_report_use_the_runs_numbers(tmp_path):
    from xsam.train.demo import demo_caption, write_demo_report

    def rows(accs, memo):
        return [
            {"epoch": i + 1, "test_acc": a, "memorized": m}
            for i, (a, m) in enumerate(zip(accs, memo, strict=True))
        ]

    runs = [
        {"label": "sgd", "seed": 0, "metrics": rows([0.80, 0.83, 0.78], [0.1, 0.3, 0.6])},
        {"label": "sam:rho=0.1", "seed": 0, "metrics": rows([0.80, 0.84, 0.85], [0.0, 0.1, 0.1])},
    ]
    text = demo_caption(runs)
    assert "sgd ended at 78.0% test accuracy (peak 83.0% at epoch 2, 60% of the flipped" in text
    assert "sam:rho=0.1 ended at 85.0%" in text and "(seed 0)" in text
    assert "cannot show" in text
    assert demo_caption([]).startswith("No run finished")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "compare.json").write_text('{"runs": [], "base": {}}')
    files = write_demo_report(out, "| table |")
    assert (out / "demo.md").read_text().startswith("# xsam demo")
    assert out / "demo.md" in files
