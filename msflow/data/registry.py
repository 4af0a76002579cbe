"""Dataset names -> loader functions, and the one entry point :func:`get_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable

from msflow.data.bundled import (
    load_digits8,
    load_mnist5k,
    load_patches32,
    load_patches32_grey,
)
from msflow.data.cifar import load_cifar10
from msflow.data.dataset import ImageDataset, downsample_images, pad_images
from msflow.data.folder import load_folder
from msflow.data.idx import load_fashion_mnist, load_mnist
from msflow.data.npz import load_imagenet32, load_imagenet64
from msflow.errors import DataError

Loader = Callable[[str, "str | os.PathLike[str] | None"], ImageDataset]

# Bundled sets come first: they need no root. Each loader takes (split, root).
_DATASETS: dict[str, Loader] = {
    "mnist5k": load_mnist5k,
    "digits8": load_digits8,
    "patches32": load_patches32,
    "patches32-grey": load_patches32_grey,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "imagenet32": load_imagenet32,
    "imagenet64": load_imagenet64,
    "folder": load_folder,
}

SPLITS = ("train", "test")


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset`, bundled sets first.

    Example:
        >>> "mnist5k" in list_datasets()
        True
    """
    return list(_DATASETS)


def get_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    pad_to: int | None = None,
    downsample: int | None = None,
) -> ImageDataset:
    """Load one split of a dataset as ``uint8`` images ``(N, C, H, W)`` with labels.

    Args:
        name: one of :func:`list_datasets`. ``mnist5k``, ``digits8``, ``patches32`` and
            ``patches32-grey`` are built from files inside pip packages and ignore ``root``;
            ``mnist``, ``fashion-mnist``, ``cifar10``, ``imagenet32``, ``imagenet64`` and
            ``folder`` read your files from ``root``.
        split: ``"train"`` or ``"test"``; each loader's docstring gives its fixed split.
        root: the folder holding your data (``~`` is expanded).
        pad_to: zero-pad images symmetrically to ``pad_to x pad_to`` (e.g. 28 -> 32 so a
            multi-scale flow can squeeze three times).
        downsample: then average ``downsample x downsample`` blocks (e.g. 2 gives 14x14
            MNIST: the data of a coarser model for MRCNF's progressive training).

    Raises:
        DataError: unknown name or split, missing root, or missing/corrupt files.

    Example:
        >>> ds = get_dataset("mnist5k", "test", pad_to=32)
        >>> len(ds), ds.image_shape
        (1000, (1, 32, 32))
    """
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(_DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for dataset {name!r}: use 'train' or 'test'")
    dataset = _DATASETS[name](split, root)
    if pad_to is not None:
        dataset.images = pad_images(dataset.images, pad_to)
    if downsample is not None:
        dataset.images = downsample_images(dataset.images, downsample)
    return dataset
