"""Split priors written as invertible standardisations (DESIGN.md section 3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from msflow.core import InvertibleModule, require_cond, sum_except_batch
from msflow.nn.subnets import ZeroConv2d, run_subnet


class GaussianSplitPrior(InvertibleModule):
    r"""Learned (optionally conditional) Gaussian prior on the factored-out channels.

    The first ``keep`` channels pass through; the rest, ``z``, are standardised under a Gaussian
    whose parameters depend on the kept channels ``h`` (and the level's condition features):

    .. math::

        \epsilon = (z - \mu(h, c))\, e^{-\log\sigma(h, c)}, \qquad
        \log|\det \partial \epsilon / \partial z| = -\textstyle\sum \log\sigma

    so ``log N(z; mu, sigma) = log N(eps; 0, I) + logdet`` and the base distribution is always
    N(0, I): temperature only scales ``eps``. With ``keep=0`` and no condition it is the learned
    top prior of Glow (a mean and scale per channel); ``from_kept=False`` gives every level that
    channel-wise prior (the kept half is then not used as context), as normflows' Glow does.

    Args:
        num_channels: channels of the input.
        keep: channels passed through and used as context (0 at the top level).
        cond_channels: channels of the level's condition features (0 when unconditional).
        kernel_size: kernel of the zero-initialised convolution that predicts ``mu, log sigma``.
        from_kept: predict ``mu, log sigma`` from the kept channels (Glow's split prior).

    Example:
        >>> import torch
        >>> prior = GaussianSplitPrior(4, keep=2)
        >>> x = torch.randn(1, 4, 2, 2)
        >>> z, ld = prior(x)
        >>> bool(torch.equal(z, x)), ld.tolist() == [0.0]  # zero-initialised: N(0, I) at the start
        (True, True)
    """

    def __init__(
        self, num_channels: int, keep: int, cond_channels: int = 0, kernel_size: int = 3, from_kept: bool = True
    ) -> None:
        super().__init__()
        if not 0 <= keep < num_channels:
            raise ValueError(f"keep must be in [0, {num_channels}), got {keep}")
        self.keep = keep
        self.cond_channels = cond_channels
        self.from_kept = from_kept
        factored = num_channels - keep
        self.loc = nn.Parameter(torch.zeros(1, factored, 1, 1))
        self.log_sigma = nn.Parameter(torch.zeros(1, factored, 1, 1))
        context = keep * from_kept + cond_channels
        self.net = ZeroConv2d(context, 2 * factored, kernel_size) if context else None

    def _mean_log_sigma(self, h: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        loc, log_sigma = self.loc.to(h.dtype), self.log_sigma.to(h.dtype)
        if self.net is None:
            return loc, log_sigma
        parts = [h] if self.from_kept else []
        if self.cond_channels:
            parts.append(require_cond(self, cond).to(h.dtype))
        inp = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        out = run_subnet(self.net, inp)
        return loc + out[:, 0::2], log_sigma + out[:, 1::2]

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        h, z = x[:, : self.keep], x[:, self.keep :]
        mu, log_sigma = self._mean_log_sigma(h, cond)
        eps = (z - mu) * (-log_sigma).exp()
        return torch.cat([h, eps], dim=1), -sum_except_batch(log_sigma.expand_as(z))

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        h, eps = z[:, : self.keep], z[:, self.keep :]
        mu, log_sigma = self._mean_log_sigma(h, cond)
        x = eps * log_sigma.exp() + mu
        return torch.cat([h, x], dim=1), sum_except_batch(log_sigma.expand_as(eps))
