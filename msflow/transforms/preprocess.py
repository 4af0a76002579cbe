"""Dequantization and the maps from [0, 1) to the flow's input space.

Dequantization turns integer pixels into a continuous ``v = (x + u) / 2^bits`` in [0, 1)^D. The
bits/dim convention (DESIGN.md section 6) then only needs ``log p(v)`` (every map below adds its
log-det to it) and ``log q(u | x)`` (0 for uniform noise); see :func:`msflow.metrics.bits_per_dim`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import InvertibleModule
from msflow.errors import DataError, NonFiniteSamples


def uniform_noise(x: Tensor, generator: torch.Generator | None, dtype: torch.dtype, same_noise: bool) -> Tensor:
    """``U[0, 1)`` noise of ``x``'s shape (one image repeated when ``same_noise``), on ``x``'s device."""
    # Drawn on the generator's device, so a seeded draw is the same on CPU and CUDA.
    where = generator.device if generator is not None else x.device
    shape = (1, *x.shape[1:]) if same_noise else x.shape
    # Drawn in float32 whatever ``dtype`` is, so a float64 evaluation sees the same noise as
    # a float32 one and their bits/dim differ only by arithmetic precision.
    u = torch.rand(shape, generator=generator, device=where, dtype=torch.float32).to(x.device, dtype)
    return u.expand(x.shape)


def check_finite_samples(v: Tensor) -> None:
    """Raise :class:`~msflow.errors.NonFiniteSamples` (a ``DataError``) if images about to be quantized
    hold NaN or infinity.

    Rounding would hide them (a NaN floors and clamps to 0, an infinity to the top bin), so a
    broken model would draw plausible-looking black or white images; refusing keeps the fault
    visible where it happens.

    Example:
        >>> check_finite_samples(torch.tensor([0.0, 0.5]))  # finite: nothing to say
        >>> try:
        ...     check_finite_samples(torch.tensor([float("nan"), 0.5]))
        ... except DataError as err:
        ...     print(str(err).split(":")[0])
        1 of 2 values to quantize are not finite (NaN or infinity)
    """
    bad = int((~torch.isfinite(v)).sum())
    if bad:
        raise NonFiniteSamples(
            f"{bad} of {v.numel()} values to quantize are not finite (NaN or infinity): the model's "
            "inverse broke down on these latents; sample at a lower temperature, evaluate in float64 "
            "(--dtype float64), or check that the checkpoint trained without diverging"
        )


class UniformDequantize(nn.Module):
    r"""``v = (x + u) / 2^{bits}``, ``u ~ U[0, 1)^D``, with ``log q(u | x) = 0``.

    Not an :class:`~msflow.core.InvertibleModule`: it is stochastic. :meth:`quantize` is its
    left inverse (``quantize(dequantize(x)) == x``).

    Args:
        n_bits: bits per sub-pixel of the integer data.

    Example:
        >>> import torch
        >>> deq = UniformDequantize(8)
        >>> x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
        >>> v, log_q = deq(x)
        >>> bool(torch.equal(deq.quantize(v), x)), log_q.tolist()
        (True, [0.0, 0.0])
    """

    def __init__(self, n_bits: int = 8) -> None:
        super().__init__()
        self.n_bits = n_bits
        self.levels = 2**n_bits

    @property
    def scale_bits(self) -> int:
        """Bits of the bin width ``2^-n_bits`` that bits/dim adds back (``n_bits``; 0 for binary dequantization)."""
        return self.n_bits

    def check(self, x: Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` holds integers in ``[0, 2^bits)``."""
        if x.dtype == torch.uint8 and self.levels >= 256:
            return  # always in range; skipping the min/max also spares a GPU a host sync per batch
        if x.is_floating_point() and not torch.equal(x, x.floor()):
            raise DataError(
                f"expected integer pixel values in [0, {self.levels - 1}] (uint8 images), got "
                "non-integer floats; pass the dataset's uint8 images, not normalised ones"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.levels):
            lo, hi = int(x.min()), int(x.max())
            raise DataError(
                f"pixel values must lie in [0, {self.levels - 1}] for {self.n_bits}-bit data, got [{lo}, {hi}]"
            )

    def forward(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        same_noise: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(v, log q(u | x))``; ``generator`` makes the noise draw reproducible.

        ``same_noise`` draws one noise image for the whole batch (common random numbers: images
        scored against each other then differ only by their content, not by their draw)."""
        self.check(x)
        u = uniform_noise(x, generator, dtype, same_noise)
        v = (x.to(dtype) + u) / self.levels
        # In float32, x + u rounds up to x + 1 when u is within half an ulp of 1; keep v in its bin.
        top = (x.to(dtype) + 1) / self.levels
        v = torch.minimum(v, torch.nextafter(top, torch.zeros_like(top)))
        # u = 0 exactly happens (2^-24 per draw): keep v off the bin's edge, where logit(0) = -inf.
        bottom = x.to(dtype) / self.levels
        v = torch.maximum(v, torch.nextafter(bottom, top))
        return v, v.new_zeros(x.shape[0])

    def quantize(self, v: Tensor) -> Tensor:
        """Map continuous ``v`` back to uint8 bins (clamped to the valid range); NaN or infinity
        raises a :class:`DataError` (:func:`check_finite_samples`)."""
        check_finite_samples(v)
        return (v * self.levels).floor().clamp(0, self.levels - 1).to(torch.uint8)


class Affine(InvertibleModule):
    r"""Fixed elementwise ``z = a v + b``; log-det ``D log|a|``. Glow uses ``a = 1, b = -1/2``.

    Example:
        >>> import torch
        >>> round(Affine(2.0, -1.0)(torch.ones(1, 1, 2, 2))[1].item(), 4)  # 4 log 2
        2.7726
    """

    def __init__(self, scale: float = 1.0, shift: float = -0.5) -> None:
        super().__init__()
        if scale == 0:
            raise ValueError("Affine scale must be non-zero")
        self.scale, self.shift = scale, shift

    def _logdet(self, x: Tensor) -> Tensor:
        return x.new_full((x.shape[0],), math.prod(x.shape[1:]) * math.log(abs(self.scale)))

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return x * self.scale + self.shift, self._logdet(x)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return (z - self.shift) / self.scale, -self._logdet(z)


class Logit(InvertibleModule):
    r"""RealNVP's logit preprocessing: ``s = a + (1 - 2a) v``, ``z = log s - log(1 - s)``.

    .. math::

        \log|\det \partial z/\partial v| = \sum_i \log(1 - 2a) - \log s_i - \log(1 - s_i)

    Args:
        alpha: the margin ``a`` keeping ``s`` away from 0 and 1 (1e-6 for MNIST in FFJORD,
            0.05 for CIFAR-10 in RealNVP).

    Example:
        >>> import torch
        >>> logit = Logit(0.05)
        >>> v = torch.rand(2, 1, 3, 3)
        >>> z, ld = logit(v)
        >>> bool(torch.allclose(logit.inverse(z)[0], v, atol=1e-6))
        True
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"Logit alpha must be in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def _logdet(self, z: Tensor) -> Tensor:
        # -log s - log(1 - s) = softplus(-z) + softplus(z): finite even where sigmoid(z)
        # rounds to exactly 0 or 1 (|z| > ~17 in float32).
        per_dim = math.log(1 - 2 * self.alpha) + F.softplus(-z) + F.softplus(z)
        return per_dim.reshape(z.shape[0], -1).sum(1)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(s) - torch.log1p(-s)
        return z, self._logdet(z)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(z)
        return (s - self.alpha) / (1 - 2 * self.alpha), -self._logdet(z)


PREPROCESSORS: dict[str, type[InvertibleModule]] = {"center": Affine, "logit": Logit}
