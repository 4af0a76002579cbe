r"""Bundled pairs for CAFLOW's image-to-image tasks: colorization, inpainting and sketch-to-image.

Every task pairs a ``size x size`` RGB crop ``x`` of the bundled colour photos (the target, the
same crops as the super-resolution pairs: :func:`~msflow.data.pairs.photo_crops`, split by
source photo) with a condition ``y`` of the same height and width made from it:

- **colorize**: ``y`` is the greyscale version, ITU-R 601-2 luma as Pillow computes it in
  16-bit fixed point,

  .. math:: y = \lfloor (19595 R + 38470 G + 7471 B + 2^{15}) / 2^{16} \rfloor
            \approx 0.299 R + 0.587 G + 0.114 B.

- **inpaint**: ``y = x \odot (1 - M)``, the crop with the pixels of a mask ``M`` set to 0. ``M``
  is the central square of half the side (:func:`central_mask`): 25% of the pixels, hidden in
  all three channels. As in the paper, the condition is a masked RGB image and the mask is
  fixed, so the model need not be told where it lies.

- **sketch**: ``y`` is a binary edge map (0 or 255) drawn by the Canny detector on the luma
  ``Y / 255``: Gaussian smoothing with :data:`SKETCH_SIGMA`, Sobel gradients, non-maximum
  suppression along the gradient, and hysteresis between gradient magnitudes 0.1 and 0.2
  (scikit-image's defaults for float images). Canny ignores the outermost pixel ring of its
  input, so edges are computed once per **whole photo** and the edge map is cropped at the
  positions of the targets: per-crop edges would leave every crop's border blank.

Nothing is cached on disk; each loader rebuilds its pairs from the photos (about a second).
"""

from __future__ import annotations

import numpy as np
import torch

from msflow._optional import require
from msflow.data.pairs import PairedDataset, photo_crops
from msflow.errors import DataError, ShapeError

SKETCH_SIGMA = 1.0
"""Standard deviation in pixels of the Gaussian that smooths the luma before Canny's gradients."""


def _check_images(images: torch.Tensor, what: str, channels: tuple[int, ...]) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = f"{images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{what} takes uint8 images (N, C, H, W) of 0..255, got {got}")
    if images.dim() != 4 or images.shape[1] not in channels:
        need = " or ".join(map(str, channels))
        raise ShapeError(f"{what} takes images (N, {need}, H, W), got {tuple(images.shape)}")


def to_grey(images: torch.Tensor) -> torch.Tensor:
    r"""ITU-R 601-2 luma of ``uint8`` RGB images ``(N, 3, H, W)`` as ``uint8`` ``(N, 1, H, W)``.

    Bit-exact with Pillow's ``Image.convert("L")``, which rounds the luma in 16-bit fixed
    point: :math:`\lfloor (19595 R + 38470 G + 7471 B + 2^{15}) / 2^{16} \rfloor`.

    Raises:
        DataError: images that are not ``uint8``.
        ShapeError: images that are not ``(N, 3, H, W)``.

    Example:
        >>> import torch
        >>> rgb = torch.tensor([255, 0, 0, 0, 255, 0, 0, 0, 255], dtype=torch.uint8).view(3, 3, 1, 1)
        >>> to_grey(rgb.permute(1, 0, 2, 3)).flatten().tolist()  # pure red, green, blue
        [76, 150, 29]
    """
    _check_images(images, "to_grey", (3,))
    r, g, b = images.to(torch.int32).unbind(1)
    luma = (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16
    return luma.to(torch.uint8).unsqueeze(1)


def central_mask(h: int, w: int) -> torch.Tensor:
    """A ``torch.bool`` ``(h, w)`` mask, True on the central ``h//2 x w//2`` rectangle.

    It covers rows ``h//4 : h//4 + h//2`` and columns ``w//4 : w//4 + w//2``: 25% of the image
    when both sides are even, centred exactly when they divide by 4.

    Example:
        >>> m = central_mask(8, 8)
        >>> int(m.sum()), m[2:6, 2:6].all().item(), m[1].any().item()
        (16, True, False)
    """
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = True
    return mask


def apply_mask(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``uint8`` images ``(N, C, H, W)`` with the pixels where ``mask`` is True set to 0 in every channel.

    Args:
        images: the images; they are not modified.
        mask: ``torch.bool``, either ``(H, W)`` for every image or ``(N, 1, H, W)``, one per image.

    Raises:
        DataError: images that are not ``uint8``, or a mask that is not ``torch.bool``.
        ShapeError: a mask whose shape fits neither form.

    Example:
        >>> import torch
        >>> x = torch.full((2, 3, 4, 4), 9, dtype=torch.uint8)
        >>> y = apply_mask(x, central_mask(4, 4))
        >>> y[0, 0].tolist()
        [[9, 9, 9, 9], [9, 0, 0, 9], [9, 0, 0, 9], [9, 9, 9, 9]]
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"apply_mask takes uint8 images (N, C, H, W), got {got}")
    n, c, h, w = images.shape
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = f"{mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise DataError(f"masks are torch.bool, True where pixels are hidden; got {got}: compare with > 0 first")
    if tuple(mask.shape) not in ((h, w), (n, 1, h, w)):
        got = "x".join(map(str, mask.shape))
        raise ShapeError(f"a mask for {c}x{h}x{w} images must be {h}x{w} (or {n}x1x{h}x{w}), got {got}")
    return images.masked_fill(mask.to(images.device), 0)


def sketch_edges(images: torch.Tensor) -> torch.Tensor:
    """Binary Canny edge maps (0 or 255) ``(N, 1, H, W)`` of ``uint8`` images ``(N, C, H, W)``, ``C`` 1 or 3.

    RGB images are first reduced to their luma (:func:`to_grey`); Canny then runs on each luma
    as floats in ``[0, 1]`` with ``sigma=`` :data:`SKETCH_SIGMA` and scikit-image's default
    hysteresis thresholds. The outermost pixel ring is never an edge (see the module notes).

    Raises:
        DataError: images that are not ``uint8``.
        ShapeError: images that are not ``(N, 1, H, W)`` or ``(N, 3, H, W)``.
        MissingDependencyError: scikit-image (the ``data`` extra) is not installed.

    Example:
        >>> import torch
        >>> square = torch.zeros(1, 1, 12, 12, dtype=torch.uint8)
        >>> square[..., 3:9, 3:9] = 255
        >>> edges = sketch_edges(square)  # the outline of the 6x6 square: 20 pixels
        >>> int(edges.sum()) // 255, edges[0, 0, 5].tolist()
        (20, [0, 0, 0, 255, 0, 0, 0, 0, 255, 0, 0, 0])
    """
    _check_images(images, "sketch_edges", (1, 3))
    canny = require("skimage.feature", "data", "sketch edge detection").canny
    luma = to_grey(images) if images.shape[1] == 3 else images
    planes = luma[:, 0].numpy().astype(np.float64) / 255.0
    edges = np.stack([canny(plane, sigma=SKETCH_SIGMA) for plane in planes])
    return torch.from_numpy(edges.astype(np.uint8) * 255).unsqueeze(1)


def _photo_edges(photo: np.ndarray) -> np.ndarray:
    # (H, W, 3) photo -> (H, W, 1) edge map, for photo_crops to crop like the photo itself.
    edges = sketch_edges(torch.from_numpy(np.ascontiguousarray(photo.transpose(2, 0, 1)))[None])
    return edges[0].permute(1, 2, 0).numpy()


def load_colorize_pairs(split: str, size: int = 32) -> PairedDataset:
    """Colorization pairs: ``size x size`` RGB photo crops given their greyscale (:func:`to_grey`) versions.

    Targets are :func:`~msflow.data.pairs.photo_crops` (with ``size=32``: 5752 train and 862
    test crops); conditions are ``(N, 1, size, size)``.

    Example:
        >>> ds = load_colorize_pairs("test")
        >>> len(ds), ds.image_shape, ds.cond_shape, ds.name, ds.task
        (862, (3, 32, 32), (1, 32, 32), 'photos-colorize', 'colorize')
    """
    targets = photo_crops(split, size)
    return PairedDataset(targets, to_grey(targets), task="colorize", name="photos-colorize")


def load_inpaint_pairs(split: str, size: int = 32) -> PairedDataset:
    """Inpainting pairs: ``size x size`` RGB photo crops given themselves with the :func:`central_mask` zeroed.

    Targets are :func:`~msflow.data.pairs.photo_crops` (with ``size=32``: 5752 train and 862
    test crops); conditions are ``(N, 3, size, size)`` with the central 25% set to 0.

    Example:
        >>> ds = load_inpaint_pairs("test")
        >>> target, cond = ds[0]
        >>> len(ds), ds.cond_shape, ds.name, int(cond[:, 8:24, 8:24].sum())
        (862, (3, 32, 32), 'photos-inpaint', 0)
    """
    targets = photo_crops(split, size)
    return PairedDataset(targets, apply_mask(targets, central_mask(size, size)), task="inpaint", name="photos-inpaint")


def load_sketch_pairs(split: str, size: int = 32) -> PairedDataset:
    """Sketch-to-image pairs: ``size x size`` RGB photo crops given their binary (0/255) edge maps.

    Targets are :func:`~msflow.data.pairs.photo_crops` (with ``size=32``: 5752 train and 862
    test crops). The edges are :func:`sketch_edges` of each whole photo, cropped at the targets'
    positions, so edges run through the crop borders as they do in the photo; conditions are
    ``(N, 1, size, size)``.

    Example:
        >>> ds = load_sketch_pairs("test")
        >>> len(ds), ds.cond_shape, ds.name, sorted(ds.conds.unique().tolist())
        (862, (1, 32, 32), 'photos-sketch', [0, 255])
    """
    targets = photo_crops(split, size)
    edges = photo_crops(split, size, per_photo=_photo_edges)
    return PairedDataset(targets, edges, task="sketch", name="photos-sketch")
