"""Dataset names -> loader functions, and the one entry point :func:`get_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from msflow.data.bundled import (
    load_digits8,
    load_mnist5k,
    load_patches32,
    load_patches32_grey,
)
from msflow.data.cifar import load_cifar10
from msflow.data.dataset import ImageDataset, downsample_images, pad_images
from msflow.data.drive import load_drive
from msflow.data.folder import load_folder
from msflow.data.idx import load_fashion_mnist, load_mnist
from msflow.data.npz import load_imagenet32, load_imagenet64
from msflow.data.pairs import PairedDataset, load_sr_pairs, resize_pairs
from msflow.data.segmentation import load_shape_segmentation
from msflow.data.translation import load_colorize_pairs, load_inpaint_pairs, load_sketch_pairs
from msflow.errors import DataError

Loader = Callable[[str, "str | os.PathLike[str] | None"], ImageDataset]


def _photos_sr(factor: int) -> Loader:
    def load(split: str, root: str | os.PathLike[str] | None = None) -> PairedDataset:
        return load_sr_pairs(split, factor)

    return load


def _bundled_pairs(loader: Callable[[str], PairedDataset]) -> Loader:
    def load(split: str, root: str | os.PathLike[str] | None = None) -> PairedDataset:
        return loader(split)

    return load


def _shapes_seg(split: str, root: str | os.PathLike[str] | None = None) -> PairedDataset:
    return load_shape_segmentation(split)


# Bundled sets come first: they need no root. Each loader takes (split, root).
_DATASETS: dict[str, Loader] = {
    "mnist5k": load_mnist5k,
    "digits8": load_digits8,
    "patches32": load_patches32,
    "patches32-grey": load_patches32_grey,
    "photos-sr2": _photos_sr(2),
    "photos-sr4": _photos_sr(4),
    "photos-colorize": _bundled_pairs(load_colorize_pairs),
    "photos-inpaint": _bundled_pairs(load_inpaint_pairs),
    "photos-sketch": _bundled_pairs(load_sketch_pairs),
    "shapes-seg": _shapes_seg,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "imagenet32": load_imagenet32,
    "imagenet64": load_imagenet64,
    "folder": load_folder,
    "drive": load_drive,
}

SPLITS = ("train", "test")

PAIRED_DATASETS = frozenset(
    {"photos-sr2", "photos-sr4", "photos-colorize", "photos-inpaint", "photos-sketch", "shapes-seg", "drive"}
)
"""Sets of (target, condition) pairs for conditional models; the others are plain image sets."""


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
            so are the conditional task sets (a :class:`~msflow.data.pairs.PairedDataset` of
            targets and conditions): ``photos-sr2`` and ``photos-sr4`` (32x32 photo crops given
            their 16x16 or 8x8 bicubic downscales), ``photos-colorize``, ``photos-inpaint`` and
            ``photos-sketch`` (the same crops given their greyscale version, their version with
            the central 25% zeroed, or their binary Canny edge map; see
            :mod:`msflow.data.translation`) and ``shapes-seg`` (64x64 vessel masks given the
            photo crops they are drawn into). ``mnist``, ``fashion-mnist``, ``cifar10``,
            ``imagenet32``, ``imagenet64``, ``folder`` and ``drive`` (DRIVE vessel masks given
            fundus photos) read your files from ``root``.
        split: ``"train"`` or ``"test"``; each loader's docstring gives its fixed split.
        root: the folder holding your data (``~`` is expanded).
        pad_to: zero-pad images symmetrically to ``pad_to x pad_to`` (e.g. 28 -> 32 so a
            multi-scale flow can squeeze three times). For pairs other than super-resolution,
            targets, conditions and the field of view are all padded with 0.
        downsample: then average ``downsample x downsample`` blocks (e.g. 2 gives 14x14
            MNIST: the data of a coarser model for MRCNF's progressive training). Binary
            segmentation masks are averaged and then thresholded (>= 0.5 is 1), so they stay 0/1.

    Raises:
        DataError: unknown name or split, missing root, or missing/corrupt files; ``pad_to``
            or ``downsample`` on super-resolution pairs (their sizes are set by the scale).

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
    if isinstance(dataset, PairedDataset) and (pad_to is not None or downsample is not None):
        return resize_pairs(dataset, pad_to, downsample)
    if (pad_to is not None or downsample is not None) and not isinstance(dataset.images, torch.Tensor):
        dataset.images = dataset.images[:]  # a memory-mapped split is read whole to be resized
    if pad_to is not None:
        dataset.images = pad_images(dataset.images, pad_to)
    if downsample is not None:
        dataset.images = downsample_images(dataset.images, downsample)
    return dataset
