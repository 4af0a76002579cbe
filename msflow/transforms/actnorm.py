"""Activation normalisation (Glow, Kingma & Dhariwal 2018)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from msflow.core import InvertibleModule


class ActNorm(InvertibleModule):
    r"""Per-channel affine map with data-dependent initialisation.

    .. math::

        z_{c,i,j} = (x_{c,i,j} + b_c)\, e^{s_c}, \qquad
        \log|\det \partial z/\partial x| = H W \sum_c s_c

    On the first forward call (when the ``initialized`` buffer is false) ``b`` and ``s`` are set
    so that the batch has zero mean and unit variance per channel. The statistics are reduced over
    every DDP rank, so each rank starts from identical parameters, and the buffer travels in
    ``state_dict()`` so a loaded model is never re-initialised.

    Args:
        num_channels: number of channels ``C``.

    Example:
        >>> import torch
        >>> norm = ActNorm(3)
        >>> z, logdet = norm(torch.randn(8, 3, 4, 4) * 5 + 2)
        >>> bool(z.mean().abs() < 1e-5)
        True
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and scale from the statistics of ``x`` (all ranks together under DDP)."""
        flat = x.detach().transpose(0, 1).reshape(self.num_channels, -1).to(torch.float64)
        stats = torch.stack([flat.sum(1), (flat * flat).sum(1)])
        count = torch.tensor(float(flat.shape[1]), dtype=torch.float64, device=x.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
            dist.all_reduce(count)
        mean = stats[0] / count
        var = (stats[1] / count - mean * mean).clamp_min(0.0)
        std = var.sqrt()
        bad = (std < 1e-6).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"ActNorm({self.num_channels}) cannot initialise: channel(s) {bad} have zero "
                "variance in the first batch; dequantize the data, use a larger or more varied "
                "first batch, or remove constant channels"
            )
        self.bias.copy_((-mean).view_as(self.bias).to(self.bias.dtype))
        self.log_scale.copy_((-std.log()).view_as(self.log_scale).to(self.log_scale.dtype))
        self.initialized.fill_(True)

    def _logdet(self, x: Tensor) -> Tensor:
        return (self.log_scale.sum() * (x.shape[2] * x.shape[3])).to(x.dtype) * x.new_ones(x.shape[0])

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        if not bool(self.initialized):
            self.initialize(x)
        z = (x + self.bias) * self.log_scale.exp()
        return z, self._logdet(x)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x = z * (-self.log_scale).exp() - self.bias
        return x, -self._logdet(z)
