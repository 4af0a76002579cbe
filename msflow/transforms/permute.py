"""Fixed channel permutations (RealNVP's alternation between coupling halves)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from msflow.core import InvertibleModule, zero_logdet


class ChannelPermutation(InvertibleModule):
    """Reorders channels by a fixed permutation; volume-preserving (log-det 0).

    Args:
        num_channels: number of channels ``C``.
        kind: ``"reverse"`` (RealNVP) or ``"shuffle"`` (a random permutation fixed at build).

    Example:
        >>> import torch
        >>> perm = ChannelPermutation(3)
        >>> perm(torch.arange(3.0).view(1, 3, 1, 1))[0].flatten().tolist()
        [2.0, 1.0, 0.0]
    """

    def __init__(self, num_channels: int, kind: str = "reverse") -> None:
        super().__init__()
        orders = {
            "reverse": lambda: torch.arange(num_channels - 1, -1, -1),
            "shuffle": lambda: torch.randperm(num_channels),
        }
        if kind not in orders:
            raise ValueError(f"unknown permutation {kind!r}; choose one of {sorted(orders)}")
        order = orders[kind]()
        self.register_buffer("order", order)
        self.register_buffer("inverse_order", torch.argsort(order))

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return x[:, self.order], zero_logdet(x)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inverse_order], zero_logdet(z)
