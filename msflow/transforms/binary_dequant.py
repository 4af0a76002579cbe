"""Variational dequantization of binary targets with half-infinite noise (Winkler et al., eq. 8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import FlowSequential, require_cond
from msflow.distributions import standard_normal_log_prob
from msflow.errors import DataError
from msflow.nn.subnets import SubnetFactory, conv_subnet
from msflow.transforms.actnorm import ActNorm
from msflow.transforms.conv1x1 import InvConv1x1
from msflow.transforms.coupling import AffineCoupling
from msflow.transforms.preprocess import check_finite_samples
from msflow.transforms.reshape import Squeeze


class BinaryDequantize(nn.Module):
    r"""Dequantize ``y in {0, 1}^D`` to ``v in R^D`` with learned half-infinite noise.

    A uniform dequantizer confines ``v`` to a bounded box, while a flow's density covers all of
    ``R^D``, so the bound of eq. 5 cannot be tight. Winkler et al. (section 3.2) let the noise
    reach infinity on the correct side of 1/2 instead:

    .. math::

        \epsilon \sim \mathcal N(0, I),\quad u = g(\epsilon; y, h),\quad
        v = \tfrac12 + \operatorname{sign}(y - \tfrac12)\,\operatorname{softplus}(u)

    with ``g`` a single-scale conditional flow (squeeze, then ``steps`` x [ActNorm, 1x1 conv,
    affine coupling]) conditioned on ``y`` and the condition features ``h`` of the main flow's
    first level. Its density is

    .. math::

        \log q(v \mid y, h) = \log\mathcal N(\epsilon) - \log|\det \partial u/\partial\epsilon|
            - \textstyle\sum \log \sigma(u)

    (``softplus' = sigmoid``; the sign flip has unit Jacobian). Every ``v`` lies in the half-line
    of its own ``y``, so ``log P(y) >= E_q[log p(v) - log q(v | y)]`` and ``quantize`` recovers
    ``y`` as ``v > 1/2``. Unlike uniform noise there is no bin width: ``scale_bits = 0`` in the
    bits/dim formula.

    The dequantizer returns the centred ``w = v - 1/2 = sign(y - 1/2) softplus(u)`` (the flow
    would subtract 1/2 first anyway): in float32, ``1/2 + softplus(u)`` rounds to exactly 1/2 for
    ``u < -17``, which would put both labels on one point, while ``w`` keeps its sign.

    The standard-normal draw is made by the inverse CDF of one uniform per target dimension, so
    it consumes a generator exactly like :class:`UniformDequantize` (data-parallel ranks skip
    each other's noise the same way).

    Args:
        channels: channels of the binary target (1 for a mask).
        cond_channels: channels of the condition features at half the target's resolution.
        steps: flow steps of ``g``.
        subnet: coupling network factory (default: Glow's with 32 hidden channels).

    Example:
        >>> import torch
        >>> deq = BinaryDequantize(1, cond_channels=3, steps=1)
        >>> y = torch.randint(0, 2, (2, 1, 4, 4), dtype=torch.uint8)
        >>> w, log_q = deq(y, torch.randn(2, 3, 2, 2))
        >>> bool(torch.equal(deq.quantize(w), y)), log_q.shape
        (True, torch.Size([2]))
    """

    n_bits = 1
    scale_bits = 0

    def __init__(self, channels: int, cond_channels: int, steps: int = 4, subnet: SubnetFactory | None = None) -> None:
        super().__init__()
        self.squeeze = Squeeze()
        width = 4 * channels
        context = cond_channels + width  # the features and the squeezed target
        blocks = []
        for _ in range(steps):
            blocks += [
                ActNorm(width),
                InvConv1x1(width),
                AffineCoupling(width, subnet=subnet or conv_subnet(32), cond_channels=context),
            ]
        self.flow = FlowSequential(*blocks)

    @staticmethod
    def check(y: Tensor) -> None:
        """Raise :class:`DataError` unless ``y`` holds only 0 and 1."""
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            found = sorted({float(v) for v in torch.unique(y)[:6].tolist()})
            raise DataError(
                f"binary dequantization needs targets of 0 and 1 (a segmentation mask), found values {found}; "
                "divide 0/255 masks by 255, or use dequantization=uniform for 8-bit targets"
            )

    def forward(
        self,
        y: Tensor,
        cond: Tensor | None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(w = v - 1/2, log q(v | y, h))`` for binary ``y`` and features ``cond`` (B, C_h, H/2, W/2)."""
        self.check(y)
        where = generator.device if generator is not None else y.device
        u01 = torch.rand(y.shape, generator=generator, device=where, dtype=torch.float32).to(y.device, dtype)
        eps = torch.special.ndtri(u01.clamp(torch.finfo(dtype).tiny, 1 - torch.finfo(dtype).eps))
        return self.from_noise(eps, y, cond)

    def from_noise(self, eps: Tensor, y: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(w = v - 1/2, log q(v | y, h))`` for a given standard-normal draw ``eps`` of ``y``'s shape."""
        cond = require_cond(self, cond)
        target, _ = self.squeeze(y.to(eps.dtype) - 0.5)
        noise, _ = self.squeeze(eps)
        u, logdet = self.flow(noise, torch.cat([cond.to(eps.dtype), target], dim=1))
        log_q = standard_normal_log_prob(eps) - logdet - F.logsigmoid(u).flatten(1).sum(1)
        w, _ = self.squeeze.inverse(torch.sign(target) * F.softplus(u))
        return w, log_q

    def quantize(self, w: Tensor) -> Tensor:
        """``y = [v > 1/2] = [w > 0]`` as ``uint8``; NaN or infinity raises a :class:`DataError`."""
        check_finite_samples(w)
        return (w > 0).to(torch.uint8)
