"""Optional download of MNIST and Fashion-MNIST, checked against the published MD5 sums.

Only for users with internet access; nothing else in xsam downloads, and the tests never do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from .readers import DataError

__all__ = ["file_digest", "download_dataset", "verify_checksum"]

# name -> (mirrors, {file: md5 as published by the data set's authors})
_SOURCES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "fashion-mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str, algorithm: str = "md5") -> None:
    """Raise :class:`DataError` unless the file's digest equals ``expected`` (hex, any case)."""
    try:
        actual = file_digest(path, algorithm)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if actual != expected.lower():
        raise DataError(f"{path}: {algorithm} is {actual}, expected {expected.lower()}")


def _fetch(urls: list[str], dest: Path, md5: str, timeout: float) -> None:
    """Download the first URL that works into ``dest``, atomically, checking ``md5``."""
    errors = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                shutil.copyfileobj(r, out, 1 << 20)
            verify_checksum(tmp, md5)
            os.replace(tmp, dest)
            return
        except (OSError, DataError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"could not download {dest.name}: " + "; ".join(errors))


def download_dataset(name: str, root: str | Path, *, timeout: float = 60.0) -> Path:
    """Download ``"fashion-mnist"`` or ``"mnist"`` into ``root/<name>`` and return that folder.

    Files already there with the right checksum are kept; each new file is written to a
    temporary name, checked against its published MD5 and only then renamed into place.
    Afterwards ``load_dataset(name, root)`` finds it.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in _SOURCES:
        raise DataError(f"cannot download {name!r}; downloadable: {', '.join(_SOURCES)}")
    mirrors, files = _SOURCES[key]
    folder = Path(root).expanduser() / key
    folder.mkdir(parents=True, exist_ok=True)
    for fname, md5 in files.items():
        dest = folder / fname
        if dest.is_file():
            try:
                verify_checksum(dest, md5)
                continue
            except DataError:
                pass  # a stale or partial file: fetch it again
        _fetch([m + fname for m in mirrors], dest, md5, timeout)
    return folder
