"""Vector fields ``f(x, t | cond)`` of continuous normalizing flows (RNODE / MRCNF, appendix 8.3).

The field is a plain network; the divergence, the log-det and the ODE solve live in
:mod:`msflow.transforms.cnf`. Its last layer starts at zero, so ``f = 0`` and the CNF it drives
starts as the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FieldFactory = Callable[[int, int], nn.Module]
"""``factory(channels, cond_channels) -> field`` with ``field(t, x, cond) -> dx/dt`` of ``x``'s shape."""


class ConcatConv2d(nn.Module):
    """A convolution whose input gets the time ``t`` as one extra constant channel (FFJORD)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:  # noqa: D102
        time = torch.ones_like(h[:, :1]) * t.to(h.dtype)
        return self.conv(torch.cat([time, h], dim=1))


class ConvVectorField(nn.Module):
    r"""RNODE's image vector field: 3x3 convs with softplus, time concatenated at every conv.

    .. math::

        f(x, t \mid c) = W_L * [t, \sigma(\dots \sigma(W_1 * [t, x, c]))],
        \qquad \sigma = \mathrm{softplus}

    Softplus (not ReLU) keeps ``f`` twice differentiable, which the divergence's
    vector-Jacobian product and its gradient need. The last convolution is zero-initialised.

    Args:
        channels: channels of the state ``x``.
        hidden: hidden channels of each inner layer (``(64, 64, 64)``: four convolutions).
        cond_channels: channels of a condition concatenated to the input (0: unconditional).
        kernel_size: convolution size.

    Example:
        >>> import torch
        >>> field = ConvVectorField(3, hidden=(8, 8), cond_channels=1)
        >>> x, c = torch.randn(2, 3, 4, 4), torch.randn(2, 1, 4, 4)
        >>> field(torch.tensor(0.5), x, c).abs().max().item()  # zero-initialised output
        0.0
    """

    def __init__(
        self, channels: int, hidden: Sequence[int] = (64, 64, 64), cond_channels: int = 0, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a vector field needs at least one hidden layer")
        self.channels, self.cond_channels = channels, cond_channels
        widths = [channels + cond_channels, *hidden]
        self.layers = nn.ModuleList(ConcatConv2d(a, b, kernel_size) for a, b in zip(widths, widths[1:], strict=False))
        self.out = ConcatConv2d(widths[-1], channels, kernel_size)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """``dx/dt`` at time ``t`` (a scalar tensor) for states ``x`` (B, C, H, W)."""
        h = x if not self.cond_channels else torch.cat([x, cond.to(x.dtype)], dim=1)
        for layer in self.layers:
            h = F.softplus(layer(t, h))
        return self.out(t, h)


def conv_vector_field(hidden: int | Sequence[int] = 64, layers: int = 3, kernel_size: int = 3) -> FieldFactory:
    """Factory of :class:`ConvVectorField`: ``layers`` hidden layers of ``hidden`` channels.

    Example:
        >>> field = conv_vector_field(hidden=8, layers=2)(channels=3, cond_channels=0)
        >>> [m.conv.out_channels for m in field.layers]
        [8, 8]
    """
    widths = (hidden,) * layers if isinstance(hidden, int) else tuple(hidden)

    def factory(channels: int, cond_channels: int) -> nn.Module:
        return ConvVectorField(channels, widths, cond_channels, kernel_size)

    return factory


FIELDS: dict[str, Callable[..., FieldFactory]] = {"conv": conv_vector_field}
"""Vector-field families by name."""
