"""Invertible 1x1 convolution (Glow), plain or LU-decomposed."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import InvertibleModule


def random_rotation(n: int) -> Tensor:
    """A random orthogonal ``n x n`` matrix (QR of a Gaussian), so the block starts volume-preserving."""
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class InvConv1x1(InvertibleModule):
    r"""Channel mixing ``z = W x`` at every pixel.

    .. math::

        \log|\det \partial z / \partial x| = H W \log|\det W|

    With ``lu=True`` (Glow's LU parametrisation) ``W = P L (U + \mathrm{diag}(\sigma e^{s}))``
    with a fixed permutation ``P``, unit lower-triangular ``L``, strictly upper ``U`` and fixed
    signs ``sigma``, so ``log|det W| = sum(s)`` costs O(C) instead of O(C^3).

    Args:
        num_channels: number of channels ``C``.
        lu: use the LU parametrisation.

    Example:
        >>> import torch
        >>> conv = InvConv1x1(4)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ld = conv(x)
        >>> bool(torch.allclose(conv.inverse(z)[0], x, atol=1e-5))
        True
    """

    def __init__(self, num_channels: int, lu: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.lu = lu
        w = random_rotation(num_channels)
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones_like(w), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_diag = nn.Parameter(diag.abs().log())

    def weight_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        """The matrix ``W`` and ``log|det W|``."""
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        eye = torch.eye(self.num_channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_diag.exp())
        return self.perm @ lower @ upper, self.log_diag.sum()

    def _mix(self, x: Tensor, w: Tensor, logabsdet: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        z = F.conv2d(x, w.to(x.dtype)[:, :, None, None])
        logdet = (sign * logabsdet * (x.shape[2] * x.shape[3])).to(x.dtype) * x.new_ones(x.shape[0])
        return z, logdet

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        w, logabsdet = self.weight_and_logabsdet()
        return self._mix(x, w, logabsdet, 1.0)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        w, logabsdet = self.weight_and_logabsdet()
        return self._mix(z, torch.linalg.inv(w.to(torch.float64)), logabsdet, -1.0)
