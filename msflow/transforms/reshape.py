"""Shape changes: the 2x2 squeeze (space-to-depth) of RealNVP and Glow."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from msflow.core import InvertibleModule, Shape, zero_logdet
from msflow.errors import ShapeError


class Squeeze(InvertibleModule):
    """``(C, H, W) -> (4C, H/2, W/2)``: each 2x2 block of pixels becomes 4 channels.

    A permutation of entries, so the log-det is 0. Channel ``4c + 2i + j`` holds pixel
    ``(2h + i, 2w + j)`` of input channel ``c``.

    Example:
        >>> import torch
        >>> Squeeze()(torch.zeros(1, 3, 8, 8))[0].shape
        torch.Size([1, 12, 4, 4])
    """

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return F.pixel_unshuffle(x, 2), zero_logdet(x)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return F.pixel_shuffle(z, 2), zero_logdet(z)

    def output_shape(self, in_shape: Shape) -> Shape:
        c, h, w = in_shape
        if h % 2 or w % 2:
            raise ShapeError(
                f"{h}x{w} cannot be squeezed: height and width must be even; pad to {h + h % 2}x{w + w % 2}"
            )
        return (4 * c, h // 2, w // 2)

    def input_shape(self, out_shape: Shape) -> Shape:
        c, h, w = out_shape
        if c % 4:
            raise ShapeError(f"{c} channels cannot be unsqueezed: the channel count must be a multiple of 4")
        return (c // 4, 2 * h, 2 * w)
