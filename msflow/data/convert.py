r"""Convert ``uint8`` images of one shape to another: channels, then size.

Used to feed a model images from a dataset it was not trained on (out-of-distribution tests).

Channels: grey -> RGB repeats the grey plane; RGB -> grey is the ITU-R 601 luma
``Y = 0.299 R + 0.587 G + 0.114 B`` (Pillow's ``"L"`` conversion, as used for the bundled grey
photos), rounded to the nearest integer.

Size (``fit``):

- ``"crop"``: per axis, centre-crop a larger side and zero-pad a smaller one (an odd surplus
  goes to the bottom/right, as in :func:`~msflow.data.pad_images`);
- ``"resize"``: bilinear interpolation to ``H x W`` (antialiased when shrinking), rounded;
- ``"auto"``: ``"crop"`` when every side is within a factor of 2 of the target (28 <-> 32
  keeps pixels at their scale), else ``"resize"`` (8 -> 28 upsamples, 64 -> 28 downsamples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from msflow.errors import ShapeError

FITS = ("auto", "crop", "resize")
LUMA = (0.299, 0.587, 0.114)


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """``uint8`` images ``(N, C, H, W)`` with ``C`` in {1, 3} as ``channels`` in {1, 3}.

    Example:
        >>> import torch
        >>> rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).reshape(1, 3, 1, 1)
        >>> convert_channels(rgb, 1).flatten().tolist()  # round(0.299 * 255)
        [76]
        >>> convert_channels(convert_channels(rgb, 1), 3).flatten().tolist()
        [76, 76, 76]
    """
    c = images.shape[1]
    if c == channels:
        return images
    if {c, channels} != {1, 3}:
        raise ShapeError(f"cannot convert {c}-channel images to {channels} channels: only grey <-> RGB is supported")
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(LUMA, dtype=torch.float64).reshape(1, 3, 1, 1)
    return (images.double() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def crop_or_pad(images: Tensor, height: int, width: int) -> Tensor:
    """Centre-crop or zero-pad ``(N, C, H, W)`` images to ``height x width``, each axis on its own.

    Example:
        >>> import torch
        >>> x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4)
        >>> crop_or_pad(x, 2, 2).flatten().tolist()
        [5, 6, 9, 10]
        >>> crop_or_pad(x, 6, 4)[0, 0, :, 0].tolist()
        [0, 0, 4, 8, 12, 0]
    """
    h, w = images.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    # Negative offsets mean padding: copy the overlap of source and target windows.
    out = images.new_zeros((*images.shape[:-2], height, width))
    sy, sx = max(top, 0), max(left, 0)
    ty, tx = max(-top, 0), max(-left, 0)
    ny, nx = min(h - sy, height - ty), min(w - sx, width - tx)
    out[..., ty : ty + ny, tx : tx + nx] = images[..., sy : sy + ny, sx : sx + nx]
    return out


def resize(images: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of ``uint8`` images to ``height x width`` (antialiased when shrinking), rounded.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0, 255]], dtype=torch.uint8).reshape(1, 1, 1, 2)
        >>> resize(x, 1, 4).flatten().tolist()
        [0, 64, 191, 255]
    """
    h, w = images.shape[-2:]
    shrink = height < h or width < w
    out = F.interpolate(images.double(), size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return out.round().clamp(0, 255).to(torch.uint8)


def choose_fit(in_size: tuple[int, int], out_size: tuple[int, int]) -> str:
    """``"crop"`` if every side is within a factor of 2 of its target (exclusive), else ``"resize"``.

    Example:
        >>> choose_fit((32, 32), (28, 28)), choose_fit((8, 8), (28, 28))
        ('crop', 'resize')
    """
    near = all(t / 2 < s < 2 * t for s, t in zip(in_size, out_size, strict=True))
    return "crop" if near else "resize"


def _crop_verb(size: tuple[int, ...], target: tuple[int, int]) -> str:
    larger = [s >= t for s, t in zip(size, target, strict=True)]
    return "centre-crop" if all(larger) else "zero-pad" if not any(larger) else "centre-crop/zero-pad"


def to_shape(images: Tensor, shape: tuple[int, int, int], fit: str = "auto") -> tuple[Tensor, str]:
    """``uint8`` images ``(N, C, H, W)`` converted to ``shape = (C', H', W')``, and what was done.

    Args:
        images: ``uint8`` images with 1 or 3 channels.
        shape: the target ``(C', H', W')``.
        fit: ``"auto"``, ``"crop"`` (centre-crop / zero-pad) or ``"resize"`` (bilinear).

    Returns:
        The converted images and a short description such as ``"RGB -> grey, centre-crop 32x32
        -> 28x28"`` (``"unchanged"`` if nothing was done).

    Example:
        >>> import torch
        >>> x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
        >>> y, how = to_shape(x, (1, 28, 28))
        >>> tuple(y.shape), how
        ((2, 1, 28, 28), 'RGB -> grey, centre-crop 32x32 -> 28x28')
    """
    if fit not in FITS:
        raise ShapeError(f"unknown fit {fit!r}: choose one of {', '.join(FITS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ShapeError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    c, h, w = shape
    steps = []
    if images.shape[1] != c:
        names = {1: "grey", 3: "RGB"}
        src = images.shape[1]
        images = convert_channels(images, c)
        steps.append(f"{names[src]} -> {names[c]}")
    size = tuple(images.shape[-2:])
    if size != (h, w):
        how = choose_fit(size, (h, w)) if fit == "auto" else fit
        images = crop_or_pad(images, h, w) if how == "crop" else resize(images, h, w)
        verb = "bilinear resize" if how == "resize" else _crop_verb(size, (h, w))
        steps.append(f"{verb} {size[0]}x{size[1]} -> {h}x{w}")
    return images, ", ".join(steps) or "unchanged"
