"""Shape changes: the 2x2 squeeze (space-to-depth) of RealNVP and Glow, and the 2x2 pyramid maps of MRCNF."""

from __future__ import annotations

import math
from typing import Any

import torch
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


class PyramidMap(InvertibleModule):
    r"""One step of an image pyramid: ``x_s -> [x_{s+1}, y_s]``, a fixed linear map per 2x2 block.

    With ``x_1, x_2, x_3, x_4`` the top-left, top-right, bottom-left and bottom-right pixels of a
    block, the map is ``[x_{s+1}, y_1, y_2, y_3] = \mathrm{diag}(a, d, d, d)\, H\, [x_1 .. x_4]``
    with the Hadamard rows ``H = [[1,1,1,1], [1,1,-1,-1], [1,-1,1,-1], [1,-1,-1,1]]``:

    .. math::

        x_{s+1} = a (x_1 + x_2 + x_3 + x_4),\quad y_1 = d (x_1 + x_2 - x_3 - x_4),\quad
        y_2 = d (x_1 - x_2 + x_3 - x_4),\quad y_3 = d (x_1 - x_2 - x_3 + x_4)

    and ``log|det|`` per block is ``log(16 a d^3)``, so the forward log-det is
    ``dim(x_{s+1}) log(16 a d^3)`` (eq. 10). Output layout ``(B, 4C, H/2, W/2)``: channels
    ``[0, C)`` hold the coarse image ``x_{s+1}``, channel ``C + 3c + k`` holds ``y_{k+1}`` of input
    channel ``c``. The inverse is ``x_q = x_{s+1} / (4a) + \sum_k H_{kq} y_k / (4d)``.

    Args:
        coarse_scale: ``a`` (1/4: the coarse image is the 2x2 average).
        detail_scale: ``d``.
    """

    block_logdet: float = 0.0

    def __init__(self, coarse_scale: float, detail_scale: float) -> None:
        super().__init__()
        self.coarse_scale, self.detail_scale = coarse_scale, detail_scale
        self.block_logdet = math.log(16 * coarse_scale * detail_scale**3)

    @property
    def coarse_factor(self) -> float:
        """The coarse output is ``coarse_factor`` times the 2x2 average (1 for eq. 6 and eq. 7)."""
        return 4 * self.coarse_scale

    @property
    def noise_gains(self) -> tuple[float, float]:
        """Standard deviations of the (coarse, detail) outputs for i.i.d. ``N(0, 1)`` input pixels."""
        return 2 * abs(self.coarse_scale), 2 * abs(self.detail_scale)

    def _logdet(self, coarse: Tensor) -> Tensor:
        return coarse.new_full((coarse.shape[0],), math.prod(coarse.shape[1:]) * self.block_logdet)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        x1, x2, x3, x4 = F.pixel_unshuffle(x, 2).view(b, c, 4, h // 2, w // 2).unbind(2)
        # Summed left to right, so with a = 1/4 the coarse image is exactly the 2x2 average.
        coarse = (x1 + x2 + x3 + x4) * self.coarse_scale
        d = self.detail_scale
        detail = torch.stack([(x1 + x2 - x3 - x4) * d, (x1 - x2 + x3 - x4) * d, (x1 - x2 - x3 + x4) * d], dim=2)
        return torch.cat([coarse, detail.reshape(b, 3 * c, h // 2, w // 2)], dim=1), self._logdet(coarse)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        b, c4, h, w = z.shape
        c = c4 // 4
        coarse = z[:, :c]
        mean = coarse / (4 * self.coarse_scale)
        y1, y2, y3 = (z[:, c:].reshape(b, c, 3, h, w) / (4 * self.detail_scale)).unbind(2)
        blocks = torch.stack([mean + y1 + y2 + y3, mean + y1 - y2 - y3, mean - y1 + y2 - y3, mean - y1 - y2 + y3], 2)
        return F.pixel_shuffle(blocks.reshape(b, 4 * c, h, w), 2), -self._logdet(coarse)

    def output_shape(self, in_shape: Shape) -> Shape:
        return Squeeze().output_shape(in_shape)

    def input_shape(self, out_shape: Shape) -> Shape:
        return Squeeze().input_shape(out_shape)

    def extra_repr(self) -> str:
        return f"coarse_scale={self.coarse_scale:.6g}, detail_scale={self.detail_scale:.6g}"


class UnimodularPyramid(PyramidMap):
    r"""MRCNF's map (eq. 7): ``a = 1/4``, ``d = 1/c`` with ``c = 2^{2/3}``; log-det exactly 0.

    ``det = 16 a d^3 = 4 / c^3 = 1``: volume preserving, and the coarse output is exactly the 2x2
    average, so its range is the image's range (the maximum principle).

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 4, 6)
        >>> out, logdet = UnimodularPyramid()(x)
        >>> out.shape, logdet.tolist()
        (torch.Size([2, 12, 2, 3]), [0.0, 0.0])
        >>> bool(torch.allclose(out[:, :3], torch.nn.functional.avg_pool2d(x, 2)))
        True
    """

    def __init__(self) -> None:
        super().__init__(0.25, 2.0 ** (-2.0 / 3.0))
        self.block_logdet = 0.0  # exactly, not log(1 +- rounding)


class HaarPyramid(PyramidMap):
    r"""The Haar map of eq. 6: ``a = 1/4`` (coarse = average), ``d = 1/2``.

    ``log|det M^{-1}| = log(16 / 32) = log(1/2)`` per 2x2 block, so the forward (analysis)
    direction ``x_s -> (y_s, x_{s+1})`` has log-det ``dim(x_{s+1}) log(1/2)``: eq. 10 with the
    paper's convention that ``Delta log p_{x_s -> (y_s, x_{s+1})} = log|det(M^{-1})|`` is the
    log-det of the map from the fine image to its decomposition.

    Example:
        >>> import torch
        >>> _, logdet = HaarPyramid()(torch.rand(1, 3, 4, 4))
        >>> round(logdet.item(), 4) == round(3 * 2 * 2 * math.log(0.5), 4)
        True
    """

    def __init__(self) -> None:
        super().__init__(0.25, 0.5)


class OrthogonalPyramid(PyramidMap):
    r"""The orthonormal Haar map (eq. 6 with its last row doubled): ``a = d = 1/2``, log-det 0.

    Orthogonal, but the coarse output is twice the 2x2 average (the range grows by 2 per level).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 2, 2)
        >>> out, logdet = OrthogonalPyramid()(x)
        >>> bool(torch.isclose(out.norm(), x.norm())), logdet.tolist()
        (True, [0.0])
    """

    def __init__(self) -> None:
        super().__init__(0.5, 0.5)
        self.block_logdet = 0.0


PYRAMIDS: dict[str, type[PyramidMap]] = {
    "unimodular": UnimodularPyramid,
    "haar": HaarPyramid,
    "orthogonal": OrthogonalPyramid,
}
"""The 2x2 pyramid maps by name (MRCNF eq. 7, eq. 6, orthonormal Haar)."""
