"""What every image flow container derives from its ``bits_per_dim``, ``sample_latents`` and ``decode``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class ImageFlow(nn.Module):
    """Base of the containers: ``log_prob`` and ``sample`` written once.

    Subclasses provide ``bits_per_dim(x, cond, generator)``, ``num_dims``, ``dequantizer``,
    ``sample_latents(n, temperature, generator)`` and ``decode(zs, cond)``.
    """

    def log_prob(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        r"""``(B,)`` lower bound on ``log P(x)`` of integer images, in nats: ``-bpd * D log 2``."""
        return -self.bits_per_dim(x, cond, generator) * (self.num_dims * math.log(2.0))

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, cond: Any = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` uint8 images ``(n, C, H, W)`` at ``temperature``."""
        zs = self.sample_latents(n, temperature, generator)
        return self.dequantizer.quantize(self.decode(zs, cond))
