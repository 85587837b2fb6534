"""Readers for the on-disk formats of the supported data sets.

Every reader validates what it reads and turns any problem (missing, truncated or corrupt file,
wrong shape, label out of range) into a :class:`DataError` whose one-line message names the file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DataError",
    "read_idx",
    "write_idx",
    "read_cifar_batch",
    "read_cifar_meta",
    "read_tiny_imagenet",
]


class DataError(ValueError):
    """A data set could not be found or read; the message says what and where."""


# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if it is gzip (recognised by content, not by name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the MNIST format), raw or gzipped, as a tensor in native byte order.

    The header is two zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian int32 sizes; the data follow, big-endian, row-major. The magic number, the sizes
    and the exact data length are all checked.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(buf)} bytes, no complete header)")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number 0x{buf[:4].hex()})")
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header (needs {header} bytes, has {len(buf)})")
    shape = tuple(int(s) for s in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(buf) - header
    if found != expected:
        what = "truncated" if found < expected else "corrupt"
        raise DataError(
            f"{path}: {what} IDX file (shape {shape} needs {expected} data bytes, has {found})"
        )
    array = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(
    path: str | Path, array: np.ndarray | torch.Tensor, *, compress: bool = False
) -> None:
    """Write ``array`` as an IDX file; with ``compress`` as gzip with a zero timestamp, so the
    bytes depend only on the data (and the zlib version)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"array dtype should be one IDX supports but is: {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"array.ndim should be in [1, 255] but is: {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    if compress:
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
            gz.write(payload)
        payload = out.getvalue()
    Path(path).write_bytes(payload)


# --- CIFAR python pickles -------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a data file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        # numpy 2 renamed numpy.core; the CIFAR files (pickled by Python 2) use the old name.
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:  # any unpickling failure means the file is not what we expect
        raise DataError(
            f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _entry(d: dict, key: str, path: Path) -> object:
    # The real files have bytes keys (Python 2 pickles); accept str keys too.
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path}: missing key {key.encode()!r}")


def read_cifar_batch(
    path: str | Path, label_key: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR python batch: images (N, 3, 32, 32) uint8 and labels (N,) int64.

    ``data`` is (N, 3072) uint8, each row the red, green and blue 32×32 planes in turn, each
    plane row-major; ``label_key`` is ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).
    """
    path = Path(path)
    d = _unpickle(path)
    data = np.asarray(_entry(d, "data", path))
    labels = np.asarray(_entry(d, label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' should be (N, 3072) uint8, found {data.shape} {data.dtype}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {label_key!r} should be {data.shape[0]} integers, found {labels.shape} "
            f"{labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels should be in [0, {num_classes}) but span "
            f"[{labels.min()}, {labels.max()}]"
        )
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.astype(np.int64))


def read_cifar_meta(path: str | Path, key: str) -> tuple[str, ...]:
    """The class names stored under ``key`` (``label_names`` or ``fine_label_names``)."""
    path = Path(path)
    names = _entry(_unpickle(path), key, path)
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{path}: {key!r} should be a list of names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


# --- Tiny-ImageNet folder ---------------------------------------------------------------------


def _load_images(paths: Sequence[Path], size: int) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "reading Tiny-ImageNet needs Pillow to decode JPEG: pip install pillow"
        ) from exc
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                img = img.convert("RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img)
        except OSError as exc:
            raise DataError(f"{p}: cannot decode image ({exc})") from exc
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def read_tiny_imagenet(
    folder: str | Path, size: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Read a ``tiny-imagenet-200`` folder, images resized to ``size``×``size`` (bilinear).

    Returns ``train_x, train_y, val_x, val_y, wnids``. Labels index the *sorted* WordNet ids (the
    class order of torchvision's ``ImageFolder``); training images are read class by class in
    file-name order, validation images in the order of ``val/val_annotations.txt``.
    """
    folder = Path(folder)
    wnids_file = folder / "wnids.txt"
    try:
        wnids = sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()})
    except OSError as exc:
        raise DataError(f"{wnids_file}: cannot read ({exc.strerror or exc})") from exc
    if not wnids:
        raise DataError(f"{wnids_file}: lists no classes")
    index = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for w in wnids:
        files = sorted((folder / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"{folder / 'train' / w / 'images'}: no *.JPEG images")
        train_paths += files
        train_labels += [index[w]] * len(files)

    ann = folder / "val" / "val_annotations.txt"
    val_paths: list[Path] = []
    val_labels: list[int] = []
    try:
        lines = ann.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{ann}: cannot read ({exc.strerror or exc})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{ann}:{n}: expected '<file>\\t<wnid from wnids.txt>', got {line!r}")
        val_paths.append(folder / "val" / "images" / fields[0])
        val_labels.append(index[fields[1]])

    return (
        _load_images(train_paths, size),
        torch.tensor(train_labels, dtype=torch.int64),
        _load_images(val_paths, size),
        torch.tensor(val_labels, dtype=torch.int64),
        tuple(wnids),
    )
