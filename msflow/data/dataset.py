"""The one in-memory dataset type every loader returns, and zero padding.

Plain datasets hold the whole split as one ``uint8`` tensor ``(N, C, H, W)``: most sets are
small enough, and a single tensor makes batching, padding and bits/dim bookkeeping trivial
(the model dequantizes, see DESIGN.md section 6). Large standard sets are memory-mapped
(:class:`ShardedImages`, indexed like a tensor), and photo tasks stream crops from disk
(:mod:`msflow.data.stream`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from msflow.errors import DataError


class ShardedImages:
    """Images ``(N, 3, S, S)`` read from several memory-mapped arrays (files on disk), only where indexed.

    Indexing with an integer, a slice or an index tensor gives a ``uint8`` tensor like a whole
    in-memory tensor would; only the pages of the rows asked for are read from disk, so a
    15 GB training split costs no memory up front (the OS caches what is read).
    """

    def __init__(self, arrays: list[np.ndarray], size: int) -> None:
        self.arrays, self.size = arrays, size
        self.starts = np.cumsum([0] + [len(a) for a in arrays])
        self.shape = torch.Size((int(self.starts[-1]), 3, size, size))
        self.dtype = torch.uint8

    def dim(self) -> int:  # noqa: D102
        return 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor) -> torch.Tensor:
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        rows = rows % max(1, len(self))
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), 3 * self.size * self.size), np.uint8)
        for k in np.unique(shard):
            picked = shard == k
            out[picked] = self.arrays[k][rows[picked] - self.starts[k]]
        images = torch.from_numpy(out).view(-1, 3, self.size, self.size)
        return images[0] if isinstance(index, int) else images


class ImageDataset(Dataset):
    """Images as a ``uint8`` tensor ``(N, C, H, W)`` with one ``int64`` label per image.

    Args:
        images: ``uint8`` tensor of shape ``(N, C, H, W)`` with ``N >= 1``.
        labels: integer tensor of shape ``(N,)``; ``None`` means unlabelled, stored as -1.
        name: the dataset name, e.g. ``"mnist5k"``; it shows up in logs and checkpoints.
        n_bits: bits per pixel of the quantized data (8 for every set shipped today).

    Raises:
        DataError: wrong dtype or shape, an empty set, or labels of the wrong length.

    Example:
        >>> import torch
        >>> ds = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), name="zeros")
        >>> len(ds), ds.image_shape
        (4, (1, 8, 8))
        >>> x, y = ds[0]
        >>> x.shape, int(y)
        (torch.Size([1, 8, 8]), -1)
    """

    def __init__(
        self,
        images: torch.Tensor | ShardedImages,
        labels: torch.Tensor | None = None,
        name: str = "images",
        n_bits: int = 8,
    ) -> None:
        if not isinstance(images, (torch.Tensor, ShardedImages)) or images.dtype != torch.uint8:
            kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(
                f"dataset {name!r}: images must be a torch.uint8 tensor, got {kind}; quantize to 0..255 first"
            )
        if images.dim() != 4:
            raise DataError(
                f"dataset {name!r}: images must have shape (N, C, H, W), got "
                f"{tuple(images.shape)}; add the missing batch or channel dimension"
            )
        if images.shape[0] == 0:
            raise DataError(f"dataset {name!r} is empty: it needs at least one image")
        if labels is None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.int64)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise DataError(f"dataset {name!r}: labels must be integers, got {labels.dtype}")
        if labels.shape != (images.shape[0],):
            raise DataError(
                f"dataset {name!r}: expected {images.shape[0]} labels, got shape "
                f"{tuple(labels.shape)}; give one label per image"
            )
        if not 1 <= n_bits <= 8:
            raise DataError(f"dataset {name!r}: n_bits must be in 1..8, got {n_bits}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.name = name
        self.n_bits = n_bits

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.images.shape[1:]
        return (c, h, w)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return f"ImageDataset(name={self.name!r}, n={len(self)}, shape={c}x{h}x{w})"


def pad_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad ``uint8`` images ``(N, C, H, W)`` symmetrically to ``(N, C, size, size)``.

    Multi-scale flows squeeze by 2 per level, so 28x28 MNIST is usually padded to 32x32
    (2 pixels each side). When the padding is odd, the extra pixel goes to the bottom/right.

    Raises:
        DataError: if an image is larger than ``size`` in either dimension.

    Example:
        >>> import torch
        >>> pad_images(torch.ones(2, 1, 28, 28, dtype=torch.uint8), 32).shape
        torch.Size([2, 1, 32, 32])
    """
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise DataError(f"cannot pad {h}x{w} images to {size}x{size}: choose pad_to >= {max(h, w)}")
    top, left = (size - h) // 2, (size - w) // 2
    out = images.new_zeros((*images.shape[:-2], size, size))
    out[..., top : top + h, left : left + w] = images
    return out


def downsample_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``uint8`` images ``(N, C, H, W)`` over ``factor x factor`` blocks, rounded to ``uint8``.

    The images a coarser model of a multi-resolution flow is trained on before a finer level
    is attached to it (MRCNF's progressive training): each pixel is the mean of the block it
    replaces, as in the pyramid of eq. 7.

    Raises:
        DataError: if ``factor`` is not a positive integer dividing ``H`` and ``W``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0, 2], [4, 7]]]], dtype=torch.uint8)
        >>> downsample_images(x, 2).tolist()  # (0 + 2 + 4 + 7) / 4 = 3.25
        [[[[3]]]]
    """
    h, w = images.shape[-2:]
    if not isinstance(factor, int) or factor < 1 or h % factor or w % factor:
        raise DataError(f"cannot downsample {h}x{w} images by {factor}: use a factor that divides both sides")
    if factor == 1:
        return images
    mean = torch.nn.functional.avg_pool2d(images.double(), factor)
    return mean.round().clamp(0, 255).to(torch.uint8)
