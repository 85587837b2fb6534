"""The names the command line offers, importable without torch.

``xsam --help`` and argument errors are answered from this module, :mod:`xsam.train.config`
and the standard library only, so they do not wait seconds for ``import torch``. The tuples
here are copies of the packages' own (:data:`xsam.data.DATASETS`,
:data:`xsam.data.NOISE_TYPES`, :data:`xsam.models.MODEL_NAMES`), which import torch;
``tests/test_cli_help.py`` checks that the copies equal them.
"""

from __future__ import annotations

__all__ = [
    "DATASET_NAMES",
    "DEMO_DIR",
    "DEMO_EPOCHS",
    "DEMO_OPTIMIZERS",
    "DEMO_PRESET",
    "MODEL_NAMES",
    "NOISE_TYPES",
]

DATASET_NAMES: tuple[str, ...] = (
    "fashion-mnist-sample",
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "tiny-imagenet",
)
"""= :data:`xsam.data.DATASETS`."""

NOISE_TYPES: tuple[str, ...] = ("symmetric", "pair")
"""= :data:`xsam.data.NOISE_TYPES`."""

MODEL_NAMES: tuple[str, ...] = (
    "small_cnn",
    "mlp",
    "plain_cnn",
    "resnet20",
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "densenet121",
    "wrn28_10",
    "vit",
)
"""= :data:`xsam.models.MODEL_NAMES`."""

DEMO_PRESET = "fmnist-sample-noise-mlp"
DEMO_EPOCHS = 20
DEMO_DIR = "demo_runs"
# each method's ρ as chosen on a noisy validation split of full Fashion-MNIST (BENCHMARKS.md,
# label noise; benchmarks/run_noise.sh), never on a test set
DEMO_OPTIMIZERS = ("sgd", "sam:rho=0.2", "xsam:rho=0.1")
