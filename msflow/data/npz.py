"""Downsampled ImageNet (Chrabaszcz et al. 2017) from its ``.npz`` files, 32x32 or 64x64.

Each file holds ``data``, ``(N, 3*S*S)`` uint8 with every row in CHW order (all red, then
green, then blue, each row-major), and ``labels``, ``(N,)`` class indices 1..1000. Train is
``train_data_batch_1.npz`` ... ``train_data_batch_10.npz``; test is ``val_data.npz``.
Arrays are read with ``allow_pickle=False``: a file that needs pickling is rejected.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from msflow.data._root import require_root
from msflow.data.dataset import ImageDataset, ShardedImages
from msflow.errors import DataError

_HINT = "download the ImageNet{s}x{s} .npz files from image-net.org (Downsampled ImageNet)"


def _member_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    # Reading only the .npy headers lets us allocate the whole split once instead of
    # concatenating per-file arrays, which would double the peak memory (ImageNet64 train
    # alone is 15 GiB).
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0
        if version != (1, 0):
            read = np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        # A header may claim any shape; the member's size must agree before that shape is
        # allocated (object arrays have no fixed size: they are refused by dtype later).
        needed = f.tell() + math.prod(shape) * dtype.itemsize
        if not dtype.hasobject and zf.getinfo(f"{key}.npy").file_size != needed:
            raise DataError(
                f"{path}: '{key}' declares {dtype} {shape}, which needs {needed} bytes, but holds "
                f"{zf.getinfo(f'{key}.npy').file_size}: the file is corrupt"
            )
    return shape, dtype


def _check_file(path: Path, size: int) -> int:
    """Validate one .npz file's keys, shapes and dtypes; return its number of images."""
    hint = _HINT.format(s=size)
    try:
        with zipfile.ZipFile(path) as zf:
            keys = {name.removesuffix(".npy") for name in zf.namelist()}
        headers = {key: _member_header(path, key) for key in ("data", "labels") if key in keys}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}; {hint}") from err
    if len(headers) < 2:
        raise DataError(f"{path} has arrays {sorted(keys)}, expected 'data' and 'labels': {hint}")
    (data_shape, data_dtype), (labels_shape, labels_dtype) = headers["data"], headers["labels"]
    width = 3 * size * size
    if len(data_shape) != 2 or data_dtype != np.uint8 or data_shape[1] != width:
        other = {3 * s * s: s for s in (32, 64) if s != size}.get(data_shape[-1] if data_shape else 0)
        advice = f"these are {other}x{other} images: use imagenet{other}" if other else hint
        raise DataError(
            f"{path}: 'data' is {data_dtype} {data_shape}, expected uint8 (N, {width}) for {size}x{size} images; "
            f"{advice}"
        )
    if labels_shape != data_shape[:1] or labels_dtype.kind not in "iu":
        raise DataError(
            f"{path}: 'labels' is {labels_dtype} {labels_shape}, expected integers ({data_shape[0]},): {hint}"
        )
    if data_shape[0] == 0:
        raise DataError(f"{path} holds no images ('data' is {data_shape}): {hint}")
    return data_shape[0]


def _batch_number(path: Path) -> int:
    return int(re.search(r"(\d+)\.npz$", path.name).group(1))


def _find_files(root: Path, split: str, size: int) -> list[Path]:
    # The archives extract to a subfolder (e.g. Imagenet32_train_npz/), so look one level
    # down as well; batch 10 must come after batch 9, hence the numeric sort.
    pattern = r"train_data_batch_\d+\.npz" if split == "train" else r"val_data\.npz"
    found = [p for p in (*root.iterdir(), *root.glob("*/*")) if re.fullmatch(pattern, p.name)]
    if not found:
        wanted = "train_data_batch_*.npz" if split == "train" else "val_data.npz"
        raise DataError(f"no {wanted} in {root}: {_HINT.format(s=size)}")
    if split == "test" and len(found) > 1:
        raise DataError(f"several val_data.npz under {root}: keep one ({found[0]} ...)")
    return sorted(found, key=_batch_number) if split == "train" else found


def _read_into(path: Path, images: torch.Tensor, labels: torch.Tensor, size: int) -> None:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x = arrays["data"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}; {_HINT.format(s=size)}") from err
    labels.copy_(_read_labels(path, size))
    images.copy_(torch.from_numpy(x.reshape(-1, 3, size, size)))


def _stored_offset(path: Path, key: str) -> int | None:
    """Byte offset of member ``key``'s array data when it is stored uncompressed (``np.savez``), else ``None``."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
            header = f.tell()
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)  # the local file header: its name and extra-field lengths end it
    return (
        info.header_offset
        + 30
        + int.from_bytes(local[26:28], "little")
        + int.from_bytes(local[28:30], "little")
        + header
    )


def _mapped(files: list[Path], counts: list[int], size: int) -> ShardedImages | None:
    offsets = [_stored_offset(path, "data") for path in files]
    if any(o is None for o in offsets):
        return None  # compressed members cannot be mapped: read them into memory instead
    arrays = [
        np.memmap(path, np.uint8, "r", offset=o, shape=(n, 3 * size * size))
        for path, o, n in zip(files, offsets, counts, strict=True)
    ]
    return ShardedImages(arrays, size)


def _read_labels(path: Path, size: int) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            y = arrays["labels"].astype(np.int64)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}; {_HINT.format(s=size)}") from err
    if len(y) and (y.min() < 1 or y.max() > 1000):
        raise DataError(f"{path}: labels span {y.min()}..{y.max()}, expected 1..1000 (1-based): {_HINT.format(s=size)}")
    return torch.from_numpy(y - 1)


def load_imagenet_npz(root: Path, split: str, size: int) -> ImageDataset:
    """Read one split of downsampled ImageNet at ``size`` (32 or 64) from the folder ``root``.

    Labels are shifted from the files' 1..1000 to 0..999. The training split is memory-mapped
    (:class:`ShardedImages`) when its files store their arrays uncompressed, as ``np.savez``
    does: ImageNet 64x64's 15 GB are then read only as batches ask for them. Compressed files
    and the test split are read into memory.

    Example (needs your own files, so not run as a doctest)::

        from pathlib import Path
        ds = load_imagenet_npz(Path("imagenet32"), "test", 32)
        len(ds), ds.image_shape
        # -> (50000, (3, 32, 32))
    """
    files = _find_files(root, split, size)
    counts = [_check_file(path, size) for path in files]
    mapped = _mapped(files, counts, size) if split == "train" else None
    if mapped is not None:
        labels = torch.cat([_read_labels(path, size) for path in files])
        return ImageDataset(mapped, labels, name=f"imagenet{size}")
    images = torch.empty((sum(counts), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(sum(counts), dtype=torch.int64)
    start = 0
    for path, n in zip(files, counts, strict=True):
        _read_into(path, images[start : start + n], labels[start : start + n], size)
        start += n
    return ImageDataset(images, labels, name=f"imagenet{size}")


def _expects(size: int) -> str:
    return f"the ImageNet{size}x{size} .npz files (train_data_batch_*.npz, val_data.npz)"


def load_imagenet32(split: str, root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Downsampled ImageNet 32x32 (3x32x32, labels 0..999): 1281167 train, 50000 test.

    ``root`` holds ``Imagenet32_train_npz/`` and ``Imagenet32_val_npz/`` (or their files).

    Example (needs your own files, so not run as a doctest)::

        ds = load_imagenet32("test", root="~/data/imagenet32")
        ds.image_shape
        # -> (3, 32, 32)
    """
    return load_imagenet_npz(require_root(root, "imagenet32", _expects(32)), split, 32)


def load_imagenet64(split: str, root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Downsampled ImageNet 64x64 (3x64x64, labels 0..999): 1281167 train, 50000 test.

    ``root`` holds ``Imagenet64_train_*/`` and ``Imagenet64_val/`` (or their files).

    Example (needs your own files, so not run as a doctest)::

        ds = load_imagenet64("test", root="~/data/imagenet64")
        ds.image_shape
        # -> (3, 64, 64)
    """
    return load_imagenet_npz(require_root(root, "imagenet64", _expects(64)), split, 64)
