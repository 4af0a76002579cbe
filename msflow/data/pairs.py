"""Datasets of (target, condition) pairs for conditional flows, the bundled photo crops and super-resolution pairs.

A conditional flow models ``p(target | condition)`` (papers 002 and 003): a high-resolution
image given its low-resolution version (``task="superres"``), a binary vessel mask given the
photo it was drawn on (``task="segment"``), or a photo given its greyscale version, its
centre-masked version or its edge map (``"colorize"``, ``"inpaint"``, ``"sketch"``: the
image-to-image tasks of CAFLOW, built in :mod:`msflow.data.translation`). Both halves are
``uint8`` tensors; the model dequantizes the target with ``n_bits`` (8 for photos, 1 for
masks, see DESIGN.md section 6). Only super-resolution conditions are smaller than their
targets; every other task pairs images of one height and width.

The bundled photo pairs all start from :func:`photo_crops`: ``size x size`` RGB crops of the
colour photos, split by source photo.

Super-resolution inputs are made as in the paper: bicubic downsampling with antialiasing
(MATLAB's ``imresize``, which Pillow's bicubic resize follows: the same Keys kernel with
``a = -0.5``, widened by the factor when shrinking). The borders differ slightly: MATLAB
mirrors the image, Pillow renormalises the kernel weights that fall inside it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from msflow.data.dataset import ImageDataset, downsample_images, pad_images
from msflow.data.photos import PHOTO_SPLIT, PHOTOGRAPHS, bundled_photos
from msflow.errors import DataError

# task -> bits per target pixel when not given: 8-bit photos, or binary (0/1) masks.
TASKS = {"superres": 8, "segment": 1, "colorize": 8, "inpaint": 8, "sketch": 8}


class PairedDataset(ImageDataset):
    """Targets ``(N, C, H, W)`` with one condition image ``(N, Cc, Hc, Wc)`` each, both ``uint8``.

    ``images`` holds the targets, so code written for :class:`ImageDataset` (padding,
    bits/dim over ``images``) keeps working; ``dataset[i]`` gives ``(target, condition)``.

    Args:
        images: the targets: photos (``n_bits=8``) or binary masks of 0 and 1 (``n_bits=1``).
        conds: the condition images, one per target.
        task: ``"superres"`` (targets are ``scale`` times larger than conditions), or one of
            ``"segment"``, ``"colorize"``, ``"inpaint"`` and ``"sketch"`` (targets and
            conditions share their height and width; ``scale`` is 1).
        name: dataset name for logs and checkpoints.
        n_bits: bits per target pixel; by default 1 for ``"segment"`` and 8 for the other
            tasks. Targets must lie in ``0 .. 2**n_bits - 1``.
        labels: as in :class:`ImageDataset`; unlabelled (-1) by default.
        fov: optional ``uint8`` field-of-view mask ``(N, 1, H, W)`` of 0 and 1 (DRIVE): the
            pixels a segmentation is scored on.

    Raises:
        DataError: shapes, counts or values that do not fit the task; the message says which.

    Example:
        >>> import torch
        >>> hr = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
        >>> ds = PairedDataset(hr, torch.zeros(5, 3, 16, 16, dtype=torch.uint8), task="superres")
        >>> ds.scale, ds.cond_shape, [tuple(t.shape) for t in ds[0]]
        (2, (3, 16, 16), [(3, 32, 32), (3, 16, 16)])
        >>> ds
        PairedDataset(name='pairs', task='superres', n=5, target=3x32x32, cond=3x16x16)
        >>> PairedDataset(hr, torch.zeros(5, 1, 32, 32, dtype=torch.uint8), task="colorize").scale
        1
    """

    def __init__(
        self,
        images: torch.Tensor,
        conds: torch.Tensor,
        task: str,
        name: str = "pairs",
        n_bits: int | None = None,
        labels: torch.Tensor | None = None,
        fov: torch.Tensor | None = None,
    ) -> None:
        if task not in TASKS:
            raise DataError(f"dataset {name!r}: unknown task {task!r}, choose one of {', '.join(TASKS)}")
        super().__init__(images, labels, name=name, n_bits=TASKS[task] if n_bits is None else n_bits)
        if not isinstance(conds, torch.Tensor) or conds.dtype != torch.uint8 or conds.dim() != 4 or not conds.numel():
            got = f"{conds.dtype} {tuple(conds.shape)}" if isinstance(conds, torch.Tensor) else type(conds).__name__
            raise DataError(f"dataset {name!r}: conditions must be a torch.uint8 tensor (N, C, H, W), got {got}")
        if conds.shape[0] != images.shape[0]:
            raise DataError(
                f"dataset {name!r} has {images.shape[0]} targets but {conds.shape[0]} conditions: "
                "give exactly one condition image per target"
            )
        self.conds = conds
        self.task = task
        self.scale = self._scale(images.shape[-2:], conds.shape[-2:])
        what = "segmentation masks" if task == "segment" else f"targets of {self.n_bits} bits"
        _check_levels(images, self.n_bits, f"dataset {name!r}: {what}")
        if fov is not None and (fov.dtype != torch.uint8 or fov.shape != (images.shape[0], 1, *images.shape[-2:])):
            raise DataError(
                f"dataset {name!r}: the field-of-view mask must be uint8 {(images.shape[0], 1, *images.shape[-2:])}, "
                f"got {fov.dtype} {tuple(fov.shape)}"
            )
        if fov is not None:
            _check_levels(fov, 1, f"dataset {name!r}: field-of-view masks")
        self.fov = fov

    def _scale(self, target_hw: torch.Size, cond_hw: torch.Size) -> int:
        (h, w), (hc, wc) = target_hw, cond_hw
        if self.task != "superres":
            if (h, w) == (hc, wc):
                return 1
            if self.task == "segment":
                raise DataError(
                    f"dataset {self.name!r}: segmentation masks are {h}x{w} but their images are {hc}x{wc}; "
                    "give each mask the size of its image"
                )
            raise DataError(
                f"dataset {self.name!r}: {self.task} targets are {h}x{w} but their conditions are {hc}x{wc}; "
                f"{self.task} pairs share their height and width: give each condition the size of its target"
            )
        if h % hc or w % wc or h // hc != w // wc or h == hc:
            raise DataError(
                f"dataset {self.name!r}: super-resolution targets are {h}x{w} and conditions {hc}x{wc}; "
                "the targets must be an integer factor >= 2 larger on both sides"
            )
        return h // hc

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.conds[i]

    @property
    def cond_shape(self) -> tuple[int, int, int]:
        """``(Cc, Hc, Wc)`` of every condition image."""
        c, h, w = self.conds.shape[1:]
        return (c, h, w)

    def __repr__(self) -> str:
        target, cond = ("x".join(map(str, s)) for s in (self.image_shape, self.cond_shape))
        return f"PairedDataset(name={self.name!r}, task={self.task!r}, n={len(self)}, target={target}, cond={cond})"


def _check_levels(images: torch.Tensor, n_bits: int, what: str) -> None:
    top, allowed = int(images.max()), 2**n_bits - 1
    if top > allowed:
        if n_bits == 1:
            fix = "divide 0/255 masks by 255" if top == 255 else "threshold them to 0 and 1"
            raise DataError(f"{what} must hold only 0 and 1, found values up to {top}; {fix}")
        raise DataError(
            f"{what} must hold values 0..{allowed}, found values up to {top}; requantize them or raise n_bits"
        )


def downscale_bicubic(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Shrink ``uint8`` images ``(N, C, H, W)`` by ``factor`` with antialiased bicubic resampling.

    Each image goes through Pillow's C resampler (one call per image; per channel when ``C``
    is not 1 or 3), which widens the cubic kernel by ``factor`` so that detail finer than the
    new pixel grid is averaged away instead of aliased, like MATLAB's ``imresize``.

    Raises:
        DataError: ``factor`` is not a positive integer dividing ``H`` and ``W``.

    Example:
        >>> import torch
        >>> x = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
        >>> y = downscale_bicubic(x, 4)
        >>> y.shape, y.unique().tolist()
        (torch.Size([2, 3, 2, 2]), [77])
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"downscale_bicubic takes uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if not isinstance(factor, int) or factor < 1:
        raise DataError(f"the downscaling factor must be a positive integer, got {factor!r}")
    if h % factor or w % factor:
        raise DataError(
            f"cannot downscale {h}x{w} images by {factor}: crop them so both sides divide by {factor} "
            f"(e.g. to {h - h % factor}x{w - w % factor})"
        )
    if factor == 1:
        return images.clone()
    size = (w // factor, h // factor)
    array = images.permute(0, 2, 3, 1).numpy()
    n, c = array.shape[0], array.shape[3]
    out = np.empty((n, size[1], size[0], c), np.uint8)
    # RGB and L images are resampled whole; other channel counts one plane at a time.
    planes = [slice(None)] if c == 3 else [slice(k, k + 1) for k in range(c)]
    for i in range(n):
        for p in planes:
            plane = array[i, :, :, p]
            image = Image.fromarray(plane if c == 3 else plane[:, :, 0])
            out[i, :, :, p] = np.asarray(image.resize(size, Image.Resampling.BICUBIC)).reshape(size[1], size[0], -1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def strided_crops(photo: np.ndarray, size: int, stride: int) -> np.ndarray:
    """``size x size`` crops of an ``(H, W, C)`` photo every ``stride`` pixels, row-major, as ``(n, C, size, size)``.

    With ``stride == size`` this is :func:`msflow.data.bundled.cut_patches`.

    Example:
        >>> strided_crops(np.zeros((64, 96, 3), np.uint8), 32, 16).shape  # 3 rows x 5 columns
        (15, 3, 32, 32)
    """
    windows = np.lib.stride_tricks.sliding_window_view(photo, (size, size), axis=(0, 1))
    chosen = windows[::stride, ::stride]
    return np.ascontiguousarray(chosen.reshape(-1, *chosen.shape[2:]))


def photo_crops(split: str, size: int, per_photo: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
    """``size x size`` crops of the bundled colour photographs of one split, as ``uint8`` ``(N, C, size, size)``.

    The photographs are :data:`~msflow.data.photos.PHOTOGRAPHS`, split by source photo as
    :data:`~msflow.data.photos.PHOTO_SPLIT`. Train crops overlap (stride ``size // 2``, about
    four times the data); test crops do not (stride ``size``). With ``size=32``: 5752 train and
    862 test crops of 3 channels. Crops are in photo order, then row-major within a photo.
    (Training through ``msflow train`` draws random crops instead: :mod:`msflow.data.stream`.)

    Args:
        split: ``"train"`` or ``"test"``.
        size: the side of the square crops.
        per_photo: optionally, a map of each whole ``(H, W, 3)`` photo to a ``uint8``
            ``(H, W, C)`` array (e.g. its edge map), cropped instead of the photo at the same
            positions: whole-photo processing leaves no artefacts at the crop borders.

    Raises:
        DataError: an unknown split.

    Example:
        >>> crops = photo_crops("test", 32)
        >>> tuple(crops.shape), crops.dtype
        ((862, 3, 32, 32), torch.uint8)
        >>> tuple(photo_crops("test", 32, per_photo=lambda p: p[:, :, :1]).shape)
        (862, 1, 32, 32)
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} of the bundled photos: use 'train' or 'test'")
    stride = size // 2 if split == "train" else size
    photos = bundled_photos(grey=False)
    crops = [
        strided_crops(photos[n] if per_photo is None else per_photo(photos[n]), size, stride)
        for n in PHOTOGRAPHS
        if PHOTO_SPLIT[n] == split
    ]
    return torch.from_numpy(np.concatenate(crops))


def load_sr_pairs(split: str, factor: int, size: int = 32) -> PairedDataset:
    """Super-resolution pairs from the bundled colour photos: ``size x size`` RGB crops and their ``1/factor`` versions.

    Targets are :func:`photo_crops` (split by source photo; train crops overlap by half, test
    crops do not). Conditions are :func:`downscale_bicubic` of the targets. With ``size=32``:
    5752 train and 862 test pairs.

    Example:
        >>> ds = load_sr_pairs("test", 4)
        >>> len(ds), ds.image_shape, ds.cond_shape, ds.name
        (862, (3, 32, 32), (3, 8, 8), 'photos-sr4')
    """
    if size % factor:
        raise DataError(f"crops of {size}x{size} cannot be downscaled by {factor}: choose a size divisible by it")
    targets = photo_crops(split, size)
    return PairedDataset(targets, downscale_bicubic(targets, factor), task="superres", name=f"photos-sr{factor}")


def photo_pairs(split: str, factor: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The whole colour photos of a split as ``name -> (HR (1, 3, H, W), LR (1, 3, H/f, W/f))``.

    The bottom and right ``H mod factor`` rows and ``W mod factor`` columns are cropped so the
    low-resolution image is exact; LR is :func:`downscale_bicubic` of that HR image.

    Example:
        >>> hr, lr = photo_pairs("test", 4)["chelsea"]
        >>> tuple(hr.shape), tuple(lr.shape)
        ((1, 3, 300, 448), (1, 3, 75, 112))
    """
    pairs = {}
    photos = bundled_photos(grey=False)
    for name in PHOTOGRAPHS:
        if PHOTO_SPLIT[name] == split:
            photo = photos[name]
            h, w = (side - side % factor for side in photo.shape[:2])
            hr = torch.from_numpy(np.ascontiguousarray(photo[:h, :w].transpose(2, 0, 1)))[None]
            pairs[name] = (hr, downscale_bicubic(hr, factor))
    return pairs


def _binary_downsample(masks: torch.Tensor, factor: int) -> torch.Tensor:
    # Block average, then >= 0.5: a 2x2 block with two vessel pixels stays vessel, so one-pixel
    # vessels do not vanish at half resolution, and the mask stays 0/1.
    mean = torch.nn.functional.avg_pool2d(masks.double(), factor)
    return (mean >= 0.5).to(torch.uint8)


def resize_pairs(dataset: PairedDataset, pad_to: int | None = None, downsample: int | None = None) -> PairedDataset:
    """Zero-pad to ``pad_to x pad_to`` and then block-average by ``downsample`` both halves of same-size pairs.

    Applies to every task but ``"superres"``. Targets, conditions and the field of view are
    padded with 0 (background, outside the field of view). When downsampling, condition images
    and 8-bit targets are block averages (as :func:`~msflow.data.dataset.downsample_images`;
    edge maps thereby become grey levels); binary masks are averaged and then set to 1 where the
    average is at least 0.5, so they stay 0/1.

    Raises:
        DataError: for super-resolution pairs, whose sizes are fixed by the scale factor.

    Example:
        >>> import torch
        >>> masks = torch.ones(2, 1, 30, 30, dtype=torch.uint8)
        >>> ds = PairedDataset(masks, torch.ones(2, 3, 30, 30, dtype=torch.uint8), task="segment")
        >>> out = resize_pairs(ds, pad_to=32, downsample=2)
        >>> out.image_shape, out.cond_shape
        ((1, 16, 16), (3, 16, 16))
        >>> int(out.images[0].sum())  # border blocks hold 2 ones of 4 (kept), corner blocks 1 (dropped)
        252
    """
    if dataset.task == "superres":
        raise DataError(
            f"pad_to and downsample do not apply to super-resolution pairs ({dataset.name!r}): their sizes are "
            "set by the scale factor; leave them unset and pick the pair set of the size you want"
        )
    images, conds, fov = dataset.images, dataset.conds, dataset.fov
    if pad_to is not None:
        images, conds = pad_images(images, pad_to), pad_images(conds, pad_to)
        fov = None if fov is None else pad_images(fov, pad_to)
    if downsample is not None:
        conds = downsample_images(conds, downsample)
        shrink = _binary_downsample if dataset.n_bits == 1 else downsample_images
        images = shrink(images, downsample)
        fov = None if fov is None else _binary_downsample(fov, downsample)
    return PairedDataset(images, conds, dataset.task, dataset.name, dataset.n_bits, dataset.labels, fov)
