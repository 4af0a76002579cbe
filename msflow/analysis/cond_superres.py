"""Super-resolution with a conditional model (a flow or the factorized baseline) on images of any size.

The models are convolutional, so an image goes through in one piece: the low-resolution input
is padded at the right and bottom (edge pixels repeated) to a size the flow's squeezes accept,
and the output is cropped back, as the paper does with zero padding at test time. Large inputs
go through tiles (:mod:`msflow.analysis.tiling`); Table 2 on the held-out photos is
:mod:`msflow.analysis.task_eval`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import evaluation_context
from msflow.errors import ShapeError


def input_multiple(model: nn.Module) -> int:
    """The condition sides a model takes must divide by this (1 for the factorized SR baseline)."""
    side = model.target_multiple
    return side // math.gcd(side, model.scale)


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Pad ``(B, C, h, w)`` at the right and bottom, repeating edge pixels, to sides divisible by ``multiple``."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return image
    return F.pad(image.float(), (0, pad_w, 0, pad_h), mode="replicate").round().to(image.dtype)


@torch.no_grad()
def sample_padded(
    model: nn.Module,
    cond: Tensor,
    n: int,
    temperature: float,
    generator: torch.Generator | None = None,
    max_batch_pixels: int = 2**21,
) -> Tensor:
    """``n`` samples of ``p(target | cond)`` for one condition ``(1, C, h, w)`` whose sides the model
    takes (see :func:`pad_to_multiple`), as uint8 on the CPU, at the size the model gives.

    Samples are drawn in batches of at most ``max_batch_pixels`` output pixels, so a photo's
    memory stays bounded whatever ``n`` is.
    """
    s = model.scale
    per_batch = max(1, max_batch_pixels // (cond.shape[-2] * cond.shape[-1] * s * s))
    out = []
    with evaluation_context(model):
        for start in range(0, n, per_batch):
            k = min(per_batch, n - start)
            out.append(model.sample(k, temperature=temperature, cond=cond, generator=generator).cpu())
    return torch.cat(out)


@torch.no_grad()
def upscale(
    model: nn.Module,
    low: Tensor,
    n: int,
    temperature: float,
    generator: torch.Generator | None = None,
    max_batch_pixels: int = 2**21,
) -> Tensor:
    """``n`` samples ``(n, C, h * s, w * s)`` of ``p(HR | low)`` for one uint8 image ``low`` ``(C, h, w)``.

    ``low`` is padded to sides the model takes and the samples are cropped back; they are drawn
    in batches of at most ``max_batch_pixels`` output pixels (:func:`sample_padded`).
    """
    c, h, w = low.shape
    if c != model.cond_shape[0]:
        raise ShapeError(f"this model takes {model.cond_shape[0]}-channel images, got {c} channels")
    device = next(model.parameters()).device
    padded = pad_to_multiple(low[None], input_multiple(model)).to(device)
    s = model.scale
    return sample_padded(model, padded, n, temperature, generator, max_batch_pixels)[..., : h * s, : w * s]


def crop_for(model: nn.Module, hr: Tensor) -> Tensor:
    """Crop a ground-truth ``(C, H, W)`` to sides a model can score exactly (at most a few pixels)."""
    m = input_multiple(model) * model.scale
    h, w = (d // m * m for d in hr.shape[-2:])
    if h == 0 or w == 0:
        raise ShapeError(f"a {hr.shape[-2]}x{hr.shape[-1]} image is smaller than the model's {m}-pixel unit")
    return hr[..., :h, :w]
