r"""A shift by a function of the condition: conditional flows model the target *relative to* it.

An image-to-image flow that measures its target ``v`` from a deterministic guess ``b(c)`` made
from the condition ``c`` (the bicubic upsampling of a low-resolution image, a grey image
repeated to RGB) has

.. math::

    \log p(v \mid c) = \log p_{\mathrm{flow}}(v - b(c) \mid c), \qquad
    \log\left|\det \frac{\partial (v - b(c))}{\partial v}\right| = 0,

so bits/dim keep their meaning. With every last layer zero-initialised, the untrained flow maps
zero latents to zero, so its temperature-0 output is ``b(c)`` itself: training can only add to
the trivial answer, never start below it.

Pixel conventions: conditions are pixel values 0..255 (floats); :class:`ImageBase` returns the
guess in the units of dequantized targets, ``v = (x + u) / 256``, at the centre ``(p + 0.5) / 256``
of the bin of its pixel value ``p``, so quantizing it, ``floor(256 b)``, gives ``p`` back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import InvertibleModule, require_cond, zero_logdet


def _keys_cubic(d: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel with Pillow's ``a = -0.5`` (torch's bicubic uses ``-0.75``)."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = (((d - 5) * d + 8) * d - 4) * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def bicubic_taps(scale: int) -> Tensor:
    """``(5, scale)`` float64 weights of input offsets ``-2..2`` for each of the ``scale`` output phases.

    Output pixel ``o = scale * q + p`` of an upsampling has its centre at input coordinate
    ``(o + 0.5) / scale``; the input pixel ``q + k`` lies ``k + 1/2 - (p + 1/2) / scale`` from it,
    which the kernel weighs (Pillow's ``precompute_coeffs`` for a factor above 1).
    """
    k = torch.arange(-2, 3, dtype=torch.float64)[:, None]
    p = torch.arange(scale, dtype=torch.float64)[None, :]
    return _keys_cubic(k + 0.5 - (p + 0.5) / scale)


_BITS = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2


def _fixed_point_weights(n: int, scale: int, device: torch.device) -> Tensor:
    """``(n, 5, scale)`` weights of each input position's 5 neighbours, as Pillow's integers."""
    taps = bicubic_taps(scale).to(device)
    # Pillow drops the taps that fall outside the image and renormalises the rest (no padding
    # rule); then it rounds each weight to an integer multiple of 2^-22, half away from zero.
    inside = F.pad(torch.ones(n, dtype=torch.float64, device=device), (2, 2)).unfold(0, 5, 1)
    w = inside[:, :, None] * taps[None]
    w = w / w.sum(1, keepdim=True)
    return torch.sign(w) * torch.floor(0.5 + w.abs() * 2**_BITS)


def _upsample_last(x: Tensor, scale: int) -> Tensor:
    """One pass of Pillow's resampling along the last axis of float64 integer pixels, rounded and clipped."""
    weights = _fixed_point_weights(x.shape[-1], scale, x.device)
    windows = F.pad(x, (2, 2)).unfold(-1, 5, 1)  # (..., n, 5)
    # Integers below 2^33 times powers of two: exact in float64 whatever the summation order.
    sums = torch.einsum("...nk,nks->...ns", windows, weights)
    return torch.floor((sums + 2 ** (_BITS - 1)) / 2**_BITS).clamp(0, 255).flatten(-2)


def pillow_bicubic(pixels: Tensor, scale: int) -> Tensor:
    """Pillow's ``Image.resize(..., Image.BICUBIC)`` upsampling of ``(B, C, h, w)`` pixels by an integer ``scale``.

    The same arithmetic as Pillow's 8-bit resampler: Keys' kernel with ``a = -0.5``, border
    weights renormalised, 22-bit fixed-point weights, a horizontal pass rounded to 0..255, then
    a vertical one. Pixels are rounded to integers first; the result holds integers 0..255 in
    ``pixels``' dtype.

    Example:
        >>> import numpy as np, torch
        >>> from PIL import Image
        >>> low = torch.randint(0, 256, (1, 1, 5, 7), dtype=torch.uint8)
        >>> ours = pillow_bicubic(low.float(), 2)[0, 0].to(torch.uint8)
        >>> theirs = np.asarray(Image.fromarray(low[0, 0].numpy()).resize((14, 10), Image.BICUBIC))
        >>> bool((ours.numpy() == theirs).all())
        True
    """
    if scale == 1:
        return pixels.round()
    x = pixels.to(torch.float64).round()
    wide = _upsample_last(x, scale)
    tall = _upsample_last(wide.transpose(-1, -2), scale).transpose(-1, -2)
    return tall.to(pixels.dtype)


class ImageBase(nn.Module):
    r"""The guess ``b(c)`` an image-to-image flow is measured from, in dequantized units.

    .. math::

        b(c) = \left(\mathrm{clamp}(\mathrm{up}_s(c), 0, 255) + \tfrac12\right) / 256

    repeated from one to ``channels`` channels when the condition is grey: ``up_s`` is Pillow's
    bicubic upsampling by ``scale`` (:func:`pillow_bicubic`; the identity for ``scale = 1``).
    Super-resolution uses ``scale = 2`` or ``4``, colorization ``scale = 1`` with a grey condition.
    Parameter-free and stateless: nothing of it goes into a checkpoint.

    Args:
        scale: integer upsampling factor from the condition to the target.
        channels: channels of the target.

    Example:
        >>> import torch
        >>> grey = torch.tensor([[[[0.0, 255.0]]]])
        >>> (ImageBase(1, channels=3)(grey) * 256).flatten().tolist()
        [0.5, 255.5, 0.5, 255.5, 0.5, 255.5]
    """

    def __init__(self, scale: int = 1, channels: int = 3) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"the upsampling scale must be a positive integer, got {scale}")
        self.scale, self.channels = scale, channels

    def forward(self, pixels: Tensor) -> Tensor:
        """Condition pixels ``(B, C_c, h, w)`` in 0..255 -> ``(B, channels, h * scale, w * scale)`` in (0, 1)."""
        up = pillow_bicubic(pixels, self.scale).clamp(0, 255)
        base = (up + 0.5) / 256
        if base.shape[1] != self.channels:
            if base.shape[1] != 1:
                raise ValueError(f"a {base.shape[1]}-channel condition cannot be the base of {self.channels} channels")
            base = base.expand(-1, self.channels, -1, -1)
        return base

    def extra_repr(self) -> str:
        return f"scale={self.scale}, channels={self.channels}"


class ConditionalShift(InvertibleModule):
    r"""``z = x - b(c)``, ``x = z + b(c)``: a translation by a function of the condition, log-det 0.

    .. math::

        \log p(x \mid c) = \log p_{\mathrm{flow}}(x - b(c) \mid c)

    The shift never depends on ``x``, so the Jacobian is the identity whatever ``b`` is. ``b`` is
    any module mapping the condition to a tensor broadcastable to ``x`` (one condition may serve
    a batch of samples). A persistent ``residual`` flag goes into every checkpoint: a flow trained
    around a constant (the state dict without it) is then refused by a model that shifts, and
    the other way round, instead of being evaluated around the wrong base.

    Args:
        base: the module ``b``.

    Example:
        >>> import torch
        >>> shift = ConditionalShift(ImageBase(scale=2))
        >>> x, lr = torch.rand(2, 3, 8, 8), torch.randint(0, 256, (2, 3, 4, 4)).float()
        >>> z, logdet = shift(x, lr)
        >>> bool(torch.allclose(shift.inverse(z, lr)[0], x)), logdet.tolist()
        (True, [0.0, 0.0])
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("residual", torch.tensor(True))

    def _shift(self, cond: Any, like: Tensor) -> Tensor:
        b = self.base(require_cond(self, cond)).to(like.dtype)
        if b.dim() != like.dim() or b.shape[1:] != like.shape[1:] or b.shape[0] not in (1, like.shape[0]):
            raise ValueError(
                f"{type(self).__name__}: the base of the condition has shape {tuple(b.shape)}, "
                f"which does not fit inputs of shape {tuple(like.shape)}"
            )
        return b

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return x - self._shift(cond, x), zero_logdet(x)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return z + self._shift(cond, z), zero_logdet(z)
