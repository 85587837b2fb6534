"""Data for xsam: in-memory image data sets, batch-level augmentation and a resumable loader.

``load_dataset("fashion-mnist-sample")`` works offline with nothing installed: a stratified
10,000/2,000 sample of Fashion-MNIST ships inside the package (``embedded/``, MIT licence).
"""

from .augment import Augment, cutout, normalize, random_crop, random_flip
from .datasets import DATASETS, EMBEDDED_DIR, ImageDataset, load_dataset
from .download import download_dataset, file_digest, verify_checksum
from .loader import BatchLoader, stratified_indices, stratified_subset
from .noise import NOISE_TYPES, noisy_labels
from .readers import (
    DataError,
    read_cifar_batch,
    read_cifar_meta,
    read_idx,
    read_tiny_imagenet,
    write_idx,
)

__all__ = [
    "DATASETS",
    "EMBEDDED_DIR",
    "NOISE_TYPES",
    "Augment",
    "BatchLoader",
    "DataError",
    "ImageDataset",
    "cutout",
    "download_dataset",
    "file_digest",
    "load_dataset",
    "noisy_labels",
    "normalize",
    "random_crop",
    "random_flip",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_idx",
    "read_tiny_imagenet",
    "stratified_indices",
    "stratified_subset",
    "verify_checksum",
    "write_idx",
]
