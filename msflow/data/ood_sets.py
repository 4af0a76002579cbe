r"""Out-of-distribution image sets in a model's shape: synthetic sets and converted datasets.

Synthetic sets are made from the in-distribution *reference* images (their count and shape):

- ``constant``: each image is one value per channel, uniform on {0, ..., 255};
- ``noise``: every sub-pixel uniform on {0, ..., 255} independently;
- ``shuffled``: the reference images with their pixels randomly permuted, one permutation per
  image shared by its channels (:func:`shuffle_patches` with ``k = 1``).

Any dataset of :func:`~msflow.data.list_datasets` is a set too: a seeded subset of its test
split, converted to the model's shape by :func:`~msflow.data.convert.to_shape`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from msflow.data.convert import to_shape
from msflow.data.dataset import ImageDataset
from msflow.data.registry import PAIRED_DATASETS, get_dataset, list_datasets
from msflow.errors import DataError, ShapeError

Synthetic = Callable[[Tensor, torch.Generator], Tensor]
"""``make(reference, generator) -> images`` of the reference's count and shape."""


def patch_sizes(height: int, width: int) -> list[int]:
    """Every ``k`` that divides both sides, i.e. the valid patch sizes of :func:`shuffle_patches`.

    Example:
        >>> patch_sizes(28, 28)
        [1, 2, 4, 7, 14, 28]
    """
    return [k for k in range(1, min(height, width) + 1) if height % k == 0 and width % k == 0]


def check_patch_sizes(ks: Sequence[int], height: int, width: int) -> None:
    """Raise :class:`ShapeError` naming the valid sizes if some ``k`` does not divide ``height x width``."""
    bad = [k for k in ks if k <= 0 or height % k or width % k]
    if bad:
        valid = ", ".join(map(str, patch_sizes(height, width)))
        raise ShapeError(f"patch size {bad[0]} does not divide the {height}x{width} images; choose from {valid}")


def shuffle_patches(images: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Randomly permute the ``k x k`` patches of each image (one permutation per image).

    The ``(H/k)(W/k)`` non-overlapping patches of an ``(N, C, H, W)`` batch are reordered by an
    independent uniform permutation per image, shared by its channels; the pixels inside a patch
    keep their arrangement. ``k = 1`` shuffles pixels; ``k = H = W`` returns the images.

    Example:
        >>> import torch
        >>> x = torch.arange(16).reshape(1, 1, 4, 4)
        >>> y = shuffle_patches(x, 2, torch.Generator().manual_seed(0))
        >>> sorted(y.flatten().tolist()) == list(range(16))  # the same pixels
        True
        >>> y[0, 0, :2, :2].tolist() in ([[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]])
        True
        >>> torch.equal(shuffle_patches(x, 4), x)
        True
    """
    n, c, h, w = images.shape
    check_patch_sizes([k], h, w)
    rows, cols = h // k, w // k
    patches = images.reshape(n, c, rows, k, cols, k).permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, c, k, k)
    order = torch.rand(n, rows * cols, generator=generator).argsort(dim=1).to(images.device)
    shuffled = patches[torch.arange(n, device=images.device)[:, None], order]
    return shuffled.reshape(n, rows, cols, c, k, k).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def constant_images(reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Images of the reference's shape, each one uniform random value per channel.

    Example:
        >>> import torch
        >>> x = constant_images(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), torch.Generator().manual_seed(0))
        >>> x.shape, x.dtype, bool((x == x[..., :1, :1]).all())
        (torch.Size([5, 3, 4, 4]), torch.uint8, True)
    """
    n, c = reference.shape[:2]
    values = torch.randint(0, 256, (n, c, 1, 1), generator=generator, dtype=torch.uint8)
    return values.expand(reference.shape).contiguous()


def noise_images(reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Images of the reference's shape with independent uniform sub-pixels on {0, ..., 255}.

    Example:
        >>> import torch
        >>> x = noise_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
        >>> x.shape, x.dtype
        (torch.Size([2, 1, 8, 8]), torch.uint8)
    """
    return torch.randint(0, 256, tuple(reference.shape), generator=generator, dtype=torch.uint8)


def shuffled_images(reference: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The reference images with their pixels randomly permuted per image (``shuffle_patches(k=1)``)."""
    return shuffle_patches(reference, 1, generator)


SYNTHETIC: dict[str, Synthetic] = {"constant": constant_images, "noise": noise_images, "shuffled": shuffled_images}


def ood_choices() -> list[str]:
    """Names accepted by :func:`load_ood_set`: the synthetic sets, then every image dataset (not task pairs).

    Example:
        >>> ood_choices()[:4]
        ['constant', 'noise', 'shuffled', 'mnist5k']
    """
    return [*SYNTHETIC, *(name for name in list_datasets() if name not in PAIRED_DATASETS)]


def check_ood_names(names: Sequence[str]) -> None:
    """Raise :class:`DataError` naming the valid choices if a name is not a known set."""
    choices = ood_choices()
    for name in names:
        if name not in choices:
            raise DataError(f"unknown OOD set {name!r}: choose from {', '.join(choices)}")


def subset(images: Tensor, n: int | None, seed: int = 0) -> Tensor:
    """A seeded random subset of ``n`` images in their original order (all of them if ``n`` is None or larger).

    Example:
        >>> import torch
        >>> subset(torch.arange(10), 3).tolist() == sorted(subset(torch.arange(10), 3).tolist())
        True
    """
    if n is None or n >= len(images):
        return images
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[index]


def load_ood_set(
    name: str,
    reference: Tensor,
    n: int | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    fit: str = "auto",
) -> tuple[ImageDataset, str]:
    """One OOD set in the shape of ``reference`` and a description of how it was made.

    Args:
        name: one of :func:`ood_choices`.
        reference: the in-distribution ``uint8`` images ``(N, C, H, W)``; synthetic sets copy
            their count and shape, ``shuffled`` permutes them.
        n: at most this many images of a dataset's test split (a seeded random subset).
        seed: seeds the subset and the synthetic draws (one fresh generator per set, so a set
            does not depend on which other sets are asked for).
        root: the folder of a non-bundled dataset.
        fit: how a dataset is brought to the reference's size, see :func:`~msflow.data.convert.to_shape`.

    Example:
        >>> import torch
        >>> ref = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
        >>> ds, how = load_ood_set("digits8", ref, n=3)
        >>> ds.images.shape, how
        (torch.Size([3, 1, 28, 28]), 'digits8 test: bilinear resize 8x8 -> 28x28')
    """
    check_ood_names([name])
    generator = torch.Generator().manual_seed(seed)
    if name in SYNTHETIC:
        images = SYNTHETIC[name](reference, generator)
        return ImageDataset(images, name=name), f"synthetic, {len(images)} images"
    dataset = get_dataset(name, "test", root=root)
    images, how = to_shape(subset(dataset.images, n, seed), tuple(reference.shape[1:]), fit)
    return ImageDataset(images, name=name), f"{name} test: {how}"
