"""MNIST and Fashion-MNIST from the original IDX files (raw or gzipped), parsed by hand.

IDX layout (big-endian): two zero bytes, a type byte (0x08 = unsigned byte), a byte giving
the number of dimensions, one uint32 per dimension, then the values. So the magic number of
an image file is 0x00000803 and that of a label file 0x00000801.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from msflow.data._root import require_root
from msflow.data.dataset import ImageDataset
from msflow.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_PREFIX = {"train": "train", "test": "t10k"}


# IDX type codes (the third byte of the magic number), for messages about foreign files.
_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_CHUNK = 1 << 24


def _describe(magic: int) -> str:
    kind = _TYPES.get((magic >> 8) & 0xFF, f"unknown type 0x{(magic >> 8) & 0xFF:02X}")
    return f"{kind}, {magic & 0xFF}-D"


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    # In chunks, so a header that declares terabytes costs only the bytes really there.
    chunks, left = [], n
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file, checking its magic number and its length.

    Args:
        path: the file, raw or ending in ``.gz``.
        magic: the expected magic number, :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`;
            its last byte is the number of dimensions.

    Returns:
        A ``uint8`` array with the dimensions from the header.

    Raises:
        DataError: a wrong magic number (type code or number of dimensions), a file shorter or
            longer than its header says, or an unreadable/corrupt gzip stream.

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = pathlib.Path(tmp.name) / "labels-idx1-ubyte"
        >>> _ = p.write_bytes(struct.pack(">II", LABELS_MAGIC, 3) + bytes([7, 2, 1]))
        >>> read_idx(p, LABELS_MAGIC).tolist()
        [7, 2, 1]
        >>> tmp.cleanup()
    """
    path = Path(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    hint = "download it again; it must be an original MNIST-format IDX file"
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:  # noqa: SIM115
            head = _read_exactly(f, header)
            if len(head) < header:
                raise DataError(f"IDX file {path} is truncated ({len(head)} bytes, less than its header): {hint}")
            (found,) = struct.unpack(">I", head[:4])
            if found != magic:
                raise DataError(
                    f"IDX file {path} has magic number 0x{found:08X}, expected 0x{magic:08X} "
                    f"({_describe(magic)}, not {_describe(found)}): {hint}"
                )
            dims = struct.unpack(f">{ndim}I", head[4:])
            count = int(np.prod(dims, dtype=object))
            # One byte more than the header asks for tells a too-long file from an exact one.
            body = _read_exactly(f, count + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"cannot read IDX file {path}: {err}; download it again (and gunzip it or keep the .gz as it is)"
        ) from None
    if len(body) != count:
        found = f"truncated ({header + len(body)} bytes)" if len(body) < count else "too long"
        raise DataError(f"IDX file {path} is {found}: its header {dims} needs exactly {header + count} bytes; {hint}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    # Both the official names (train-images-idx3-ubyte) and the common variant with a dot
    # (train-images.idx3-ubyte) are in circulation, each raw or gzipped.
    kind, rest = stem.rsplit("-idx", 1)
    for name in (stem, f"{kind}.idx{rest}"):
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"{stem}[.gz] not found in {root}: put the four MNIST-format IDX files there "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte, raw or .gz)"
    )


def _load_idx_pair(root: Path, split: str, name: str) -> ImageDataset:
    prefix = _PREFIX[split]
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if 0 in images.shape:
        raise DataError(f"{images_path} holds no pixels (its header says {images.shape}): download it again")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels: use files from the same download"
        )
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        name=name,
    )


def _expects(name: str) -> str:
    return f"the {name} IDX files (train-images-idx3-ubyte[.gz] and the other three)"


def load_mnist(split: str, root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """MNIST (1x28x28, labels 0..9) from the four IDX files in ``root``.

    Example (needs your own files, so not run as a doctest)::

        ds = load_mnist("test", root="~/data/mnist")
        len(ds)
        # -> 10000
    """
    return _load_idx_pair(require_root(root, "mnist", _expects("MNIST")), split, "mnist")


def load_fashion_mnist(split: str, root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Fashion-MNIST (1x28x28, labels 0..9); same file names and format as MNIST.

    Example (needs your own files, so not run as a doctest)::

        ds = load_fashion_mnist("train", root="~/data/fashion")
        ds.image_shape
        # -> (1, 28, 28)
    """
    root_path = require_root(root, "fashion-mnist", _expects("Fashion-MNIST"))
    return _load_idx_pair(root_path, split, "fashion-mnist")
