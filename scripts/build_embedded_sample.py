"""Build the Fashion-MNIST sample shipped in ``src/xsam/data/embedded/``.

A stratified sample, drawn with a fixed seed: 1,000 training images per class (10,000) and
200 test images per class (2,000), kept in their original order, written as gzipped IDX files
with the data set's standard names. The output depends only on the source data, the seed and
torch's ``randperm`` (and zlib for the compressed bytes). Usage::

    apt-get install -y dataset-fashion-mnist
    python scripts/build_embedded_sample.py [--source DIR] [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from xsam.data import EMBEDDED_DIR, load_dataset, stratified_indices, write_idx

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
SEED = 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        default=None,
        help="folder with the full Fashion-MNIST IDX "
        "files (default: $XSAM_DATA, then /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    full = load_dataset("fashion-mnist", args.source)
    if len(full.train_y) != 60000 or len(full.test_y) != 10000:
        parser.error(f"{full.source} does not hold the full 60,000/10,000 Fashion-MNIST")
    g = torch.Generator().manual_seed(args.seed)
    train_idx = stratified_indices(full.train_y, TRAIN_PER_CLASS, g)
    test_idx = stratified_indices(full.test_y, TEST_PER_CLASS, g)

    args.out.mkdir(parents=True, exist_ok=True)
    for split, x, y in (
        ("train", full.train_x[train_idx], full.train_y[train_idx]),
        ("t10k", full.test_x[test_idx], full.test_y[test_idx]),
    ):
        write_idx(args.out / f"{split}-images-idx3-ubyte.gz", x[:, 0], compress=True)
        write_idx(args.out / f"{split}-labels-idx1-ubyte.gz", y.to(torch.uint8), compress=True)

    sample = load_dataset("fashion-mnist-sample") if args.out == EMBEDDED_DIR else None
    print(f"source: {full.source}, seed {args.seed}")
    for f in sorted(args.out.glob("*.gz")):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        print(f"{f.name:30s} {f.stat().st_size:>9,d} bytes  sha256 {digest}")
    if sample is not None:
        print(f"fingerprint (ImageDataset.fingerprint): {sample.fingerprint()}")


if __name__ == "__main__":
    main()
