"""Variational dequantization (Flow++, Ho et al. 2019): learned noise inside each integer bin."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from msflow.core import FlowSequential
from msflow.distributions import standard_normal_log_prob
from msflow.nn.subnets import conv_subnet
from msflow.transforms.actnorm import ActNorm
from msflow.transforms.conv1x1 import InvConv1x1
from msflow.transforms.coupling import AffineCoupling
from msflow.transforms.injector import AffineInjector
from msflow.transforms.preprocess import UniformDequantize, uniform_noise
from msflow.transforms.reshape import Squeeze


class VariationalDequantize(UniformDequantize):
    r"""``v = (x + u) / 2^{bits}`` with ``u`` drawn from a flow conditioned on the image ``x``.

    Uniform noise makes every bin a flat box, which a smooth flow cannot fit exactly, so the
    bound ``log P(x) >= E_q[log p(v) - log q(u | x)]`` stays loose. Learning ``q`` tightens it:

    .. math::

        \epsilon \sim \mathcal N(0, I),\quad h = g(\epsilon; x),\quad u = \sigma(h),\quad
        \log q(u \mid x) = \log\mathcal N(\epsilon) - \log|\det \partial h/\partial\epsilon|
            - \textstyle\sum \log \sigma'(h)

    with ``sigma' = sigma (1 - sigma)`` and ``g`` a single-scale conditional flow on the squeezed
    noise: ``steps`` x [ActNorm, 1x1 conv, affine injector, conditional affine coupling], both
    reading the squeezed image centred to [-1/2, 1/2] (CAFLOW appendix A.1 and B.1: four such
    steps). ``u`` lies in (0, 1), so :meth:`quantize` recovers ``x``, and the bits/dim formula
    is unchanged: ``log q`` is the density of ``u`` on the unit bin.

    The standard-normal draw uses one uniform per dimension through the inverse CDF, so it
    consumes a generator exactly like :class:`UniformDequantize`.

    Args:
        channels: channels of the images.
        n_bits: bits per sub-pixel.
        steps: flow steps of ``g``.
        hidden: hidden channels of its networks.

    Example:
        >>> import torch
        >>> deq = VariationalDequantize(3, steps=1, hidden=8)
        >>> x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
        >>> v, log_q = deq(x)
        >>> bool(torch.equal(deq.quantize(v), x)), log_q.shape
        (True, torch.Size([2]))
    """

    def __init__(self, channels: int, n_bits: int = 8, steps: int = 4, hidden: int = 32) -> None:
        super().__init__(n_bits)
        if steps < 1:
            raise ValueError(f"variational dequantization needs at least one flow step, got {steps}")
        self.squeeze = Squeeze()
        width = 4 * channels
        blocks = []
        for _ in range(steps):
            blocks += [
                ActNorm(width),
                InvConv1x1(width),
                AffineInjector(width, width, conv_subnet(hidden)),
                AffineCoupling(width, subnet=conv_subnet(hidden), scale="atan", cond_channels=width),
            ]
        self.flow = FlowSequential(*blocks)

    def forward(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        same_noise: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(v, log q(u | x))`` for one draw of the learned noise (one for the batch if ``same_noise``)."""
        self.check(x)
        u01 = uniform_noise(x, generator, dtype, same_noise)
        eps = torch.special.ndtri(u01.clamp(torch.finfo(dtype).tiny, 1 - torch.finfo(dtype).eps))
        return self.from_noise(eps, x)

    def from_noise(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, log q(u | x))`` for a given standard-normal draw ``eps`` of ``x``'s shape."""
        context, _ = self.squeeze(x.to(eps.dtype) / (self.levels - 1) - 0.5)
        noise, _ = self.squeeze(eps)
        h, logdet = self.flow(noise, context)
        log_q = standard_normal_log_prob(eps) - logdet - (F.logsigmoid(h) + F.logsigmoid(-h)).flatten(1).sum(1)
        u, _ = self.squeeze.inverse(torch.sigmoid(h))
        v = (x.to(eps.dtype) + u) / self.levels
        # sigmoid saturates to exactly 0 or 1 in floating point; keep v strictly inside its bin.
        top = (x.to(eps.dtype) + 1) / self.levels
        bottom = x.to(eps.dtype) / self.levels
        v = torch.minimum(torch.maximum(v, torch.nextafter(bottom, top)), torch.nextafter(top, bottom))
        return v, log_q
