"""The condition a CAFLOW model takes, made from a user's image, and the ground truth it holds.

One function, :func:`prepare_condition`, by the model's task (paper 002's four): a colour photo
becomes its greyscale (colorize), its edges (sketch), itself with a hidden region (inpaint) or
its bicubic downscale (superres with ``hr=True``), and the photo is the truth to compare with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from msflow.analysis.cond_superres import crop_for
from msflow.data.pairs import downscale_bicubic
from msflow.data.translation import apply_mask, central_mask, sketch_edges, to_grey
from msflow.errors import ConfigError, DataError, ShapeError


def _shape(image: Tensor) -> str:
    return "x".join(map(str, image.shape))


def _colorize(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    if image.shape[0] == 3:
        return to_grey(image[None])[0], image
    return image, None


def _inpaint(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    c, h, w = image.shape
    if c != 3:
        raise ShapeError(f"inpaint expects an RGB image (3x{h}x{w}), got {_shape(image)}")
    if mask is None:
        mask = central_mask(h, w)
    elif tuple(mask.shape) != (h, w):
        raise ShapeError(f"the mask of a {h}x{w} image must be {h}x{w} (True or 1: hidden), got {_shape(mask)}")
    elif mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError("a mask holds True/False or 1/0 (1: hidden); threshold it first")
        mask = mask == 1
    return apply_mask(image[None], mask)[0], image


def _sketch(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    if image.shape[0] == 3:
        return sketch_edges(image[None])[0], image
    return image, None


def _superres(model: nn.Module, image: Tensor, mask: Tensor | None, hr: bool) -> tuple[Tensor, Tensor | None]:
    if image.shape[0] != 3:
        raise ShapeError(f"superres expects an RGB image (3xHxW), got {_shape(image)}")
    if not hr:
        return image, None
    truth = crop_for(model, image)
    return downscale_bicubic(truth[None], model.scale)[0], truth


# task -> map of a grey or RGB image (and a mask, hr) to (condition, truth or None)
_PREPARE: dict[str, Callable[[nn.Module, Tensor, Tensor | None, bool], tuple[Tensor, Tensor | None]]] = {
    "colorize": _colorize,
    "inpaint": _inpaint,
    "sketch": _sketch,
    "superres": _superres,
}


def prepare_condition(
    model: nn.Module, image: Tensor, mask: Tensor | None = None, hr: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The condition ``(Cc, H, W)`` a CAFLOW model takes, made from a user's uint8 image ``(C, H, W)``,
    and the ground truth when the image holds it (else ``None``). By the model's task:

    - **colorize**: an RGB image becomes its greyscale (:func:`~msflow.data.translation.to_grey`),
      the truth; a grey image is the condition as it is.
    - **inpaint**: an RGB image with the pixels of ``mask`` (by default the
      :func:`~msflow.data.translation.central_mask`) set to 0; the truth is the image.
    - **sketch**: an RGB photo becomes its edges (:func:`~msflow.data.translation.sketch_edges`),
      the truth; a grey image is taken as the edge map.
    - **superres**: the RGB image is the low-resolution input; with ``hr=True`` it is the truth,
      cropped to sides the model takes (:func:`~msflow.analysis.cond_superres.crop_for`), and
      the input is its antialiased bicubic ``1/scale`` version, as the training pairs were made.

    Args:
        model: a CAFLOW model (its ``task`` picks the row).
        image: uint8 ``(1 or 3, H, W)``.
        mask: inpainting only: ``(H, W)`` bool or 0/1, True (1) where pixels are hidden.
        hr: super-resolution only: the image is the ground truth.

    Raises:
        ShapeError: a grey image for inpaint or superres, or a mask of the wrong size.
        DataError: an image that is not uint8, or a mask of other values than 0 and 1.
        ConfigError: ``mask`` for a task other than inpaint, ``hr`` for one other than superres.

    Example:
        >>> import torch, msflow
        >>> model = msflow.create_model("caflow-inpaint", size=16, levels=2, hidden=8, cond_hidden=8,
        ...                             cond_steps=1, target_steps=1, flow_steps=1)
        >>> photo = torch.full((3, 8, 12), 200, dtype=torch.uint8)
        >>> cond, truth = prepare_condition(model, photo)
        >>> cond[0].tolist()[3], truth is photo
        ([200, 200, 200, 0, 0, 0, 0, 0, 0, 200, 200, 200], True)
    """
    task = model.task
    if mask is not None and task != "inpaint":
        raise ConfigError(f"a mask is for inpainting; this is a {task} model")
    if hr and task != "superres":
        raise ConfigError(f"hr=True is for super-resolution; this is a {task} model")
    if not isinstance(image, Tensor) or image.dtype != torch.uint8:
        got = image.dtype if isinstance(image, Tensor) else type(image).__name__
        raise DataError(f"give a uint8 image (C, H, W) of 0..255, got {got}")
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ShapeError(f"{task} takes a grey or RGB image (1xHxW or 3xHxW), got {_shape(image)}")
    return _PREPARE[task](model, image, mask, hr)


__all__ = ["prepare_condition"]
