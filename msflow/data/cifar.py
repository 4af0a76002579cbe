"""CIFAR-10 from its *binary* distribution (``cifar-10-binary.tar.gz``).

Each ``.bin`` file is a run of 3073-byte records: one label byte (0..9), then the 32x32 red
plane, the green plane and the blue plane, each row-major. So a record is already in CHW
order. The python distribution is never read: its batches are pickles, and msflow does not
unpickle data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from msflow.data._root import require_root
from msflow.data.dataset import ImageDataset
from msflow.errors import DataError

RECORD_BYTES = 1 + 3 * 32 * 32

_FILES = {
    "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["test_batch.bin"],
}
_BINARY_HINT = "download the binary version (cifar-10-binary.tar.gz) and extract it there"


def read_cifar_bin(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Raises:
        DataError: the length is not a positive multiple of 3073 bytes, or a label is not
            in 0..9 (e.g. a CIFAR-100 file, whose records carry two label bytes).

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = pathlib.Path(tmp.name) / "test_batch.bin"
        >>> _ = p.write_bytes(bytes([3]) + bytes(3072))
        >>> images, labels = read_cifar_bin(p)
        >>> images.shape, labels.tolist()
        ((1, 3, 32, 32), [3])
        >>> tmp.cleanup()
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read CIFAR-10 file {path}: {err}; {_BINARY_HINT}") from err
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"CIFAR-10 file {path} is {len(data)} bytes, not a multiple of {RECORD_BYTES} "
            f"(1 label byte + 3072 pixel bytes per image): it is truncated or not CIFAR-10; "
            f"{_BINARY_HINT}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(
            f"CIFAR-10 file {path} has label {labels.max()} (CIFAR-10 labels are 0..9): "
            f"it is not a CIFAR-10 binary batch; {_BINARY_HINT}"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _batches_folder(root: Path) -> Path:
    # Accept both the extracted folder itself and the folder the archive was extracted in.
    nested = root / "cifar-10-batches-bin"
    return nested if nested.is_dir() else root


def _missing_file_error(folder: Path, file: str) -> DataError:
    pickled = (folder / "data_batch_1").is_file() or (folder / "cifar-10-batches-py").is_dir()
    if pickled:
        return DataError(
            f"found the pickled CIFAR-10 python version in {folder}; msflow never unpickles data: {_BINARY_HINT}"
        )
    return DataError(f"{file} not found in {folder}: {_BINARY_HINT}")


def load_cifar10(split: str, root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """CIFAR-10 (3x32x32, labels 0..9): train = ``data_batch_1..5.bin`` (50000 images),
    test = ``test_batch.bin`` (10000), in file order.

    ``root`` is the ``cifar-10-batches-bin`` folder or the folder that contains it.

    Example (needs your own files, so not run as a doctest)::

        ds = load_cifar10("test", root="~/data")
        len(ds), ds.image_shape
        # -> (10000, (3, 32, 32))
    """
    folder = _batches_folder(require_root(root, "cifar10", "the CIFAR-10 binary batches (data_batch_1.bin ...)"))
    images, labels = [], []
    for file in _FILES[split]:
        if not (folder / file).is_file():
            raise _missing_file_error(folder, file)
        x, y = read_cifar_bin(folder / file)
        images.append(x)
        labels.append(y)
    return ImageDataset(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        name="cifar10",
    )
