"""Dual affine coupling with a Mexican-hat mixture scale (Liao & He, eq. 14-15)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from msflow.core import InvertibleModule, require_cond, sum_except_batch
from msflow.nn.subnets import SubnetFactory, conv_subnet, run_subnet


def mexican_hat(phi: Tensor) -> Tensor:
    """``(1 - phi^2) exp(-phi^2 / 2)``: 1 at 0, minimum ``-2 e^{-3/2}`` at ``phi^2 = 3``, 0 far out."""
    sq = phi * phi
    return (1 - sq) * torch.exp(-0.5 * sq)


LOG_SCALE_RANGE = (-2 * math.exp(-1.5), 1.0)
"""Range of eq. 15's log-scale: the scale stays in about (0.64, 2.72)."""


def mexican_hat_biases(target: float, mixtures: int, spread: float = 0.25) -> Tensor:
    """Biases ``b_m`` (spread around a common value) whose mean Mexican hat equals ``target``.

    With the zero-initialised weights ``w_m`` of eq. 15 the log-scale is the mean of
    ``mexican_hat(b_m)``. The ``b_m`` are ``c (1 + o_m)`` with offsets ``o_m`` evenly spread in
    ``[-spread, spread]``, so the mixture components differ and get different gradients (equal
    biases with equal zero weights would stay identical forever); ``c`` is found by bisection
    where the mean is decreasing in ``c``.
    """
    lo_t, hi_t = LOG_SCALE_RANGE
    offsets = torch.linspace(-spread, spread, mixtures, dtype=torch.float64) if mixtures > 1 else torch.zeros(1)
    c_max = math.sqrt(3.0) / (1 + spread)  # every b_m stays on the decreasing side of the hat

    def mean_hat(c: float) -> float:
        return float(mexican_hat(c * (1 + offsets.double())).mean())

    if not mean_hat(c_max) <= target < 1.0:
        raise ValueError(
            f"an initial log-scale of {target:.4f} is outside what eq. 15 can start at "
            f"([{mean_hat(c_max):.3f}, 1)); choose beta and kappa with -log(beta * kappa) in that range "
            f"(e.g. beta in [0.5, 1), kappa = 1); the full range of the log-scale is {lo_t:.3f}..{hi_t}"
        )
    lo, hi = 0.0, c_max
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_hat(mid) > target else (lo, mid)
    return (0.5 * (lo + hi) * (1 + offsets)).float()


class DualAffineCoupling(InvertibleModule):
    r"""Two affine couplings in one block, so every dimension is transformed (eq. 14).

    .. math::

        y_1 = s_1(x_2) \odot x_1 + t_1(x_2), \qquad y_2 = s_2(y_1) \odot x_2 + t_2(y_1)

    Each net's last layer gives a shift ``t`` and ``M`` pre-activations ``phi_m``; the
    log-scale is the mean of ``M`` Mexican hats (eq. 15),

    .. math::

        \log s = \frac{1}{M} \sum_m (1 - \varphi_m^2) e^{-\varphi_m^2 / 2},
        \qquad \varphi_m = w_m \phi + b_m,

    bounded in ``[-2 e^{-3/2}, 1]``, so the scale stays in (0.64, 2.72) however the weights
    move. ``w_m`` start at zero (the subnet's zero-initialised last layer) and the learned
    biases ``b_m`` are set so that ``log s`` starts at ``init_log_scale``:
    ``-log(beta kappa)`` in the blockwise volume-preserving initialisation (eq. 18).
    ``log|det| = sum log s_1 + sum log s_2``.

    Args:
        num_channels: channels; ``x_1`` is the first ``C // 2``.
        subnet: factory ``(in, out) -> nn.Module`` with a zero-initialised last layer.
        mixtures: number ``M`` of Mexican hats.
        init_log_scale: the log-scale every entry starts at.
        cond_channels: channels of a condition concatenated to both nets' inputs.

    Example:
        >>> import torch
        >>> from msflow.nn import conv_subnet
        >>> layer = DualAffineCoupling(4, subnet=conv_subnet(hidden=8), init_log_scale=math.log(2))
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ld = layer(x)
        >>> bool(torch.allclose(z, 2 * x, atol=1e-5)), round(ld[0].item() / (36 * math.log(2)), 5)
        (True, 1.0)
    """

    def __init__(
        self,
        num_channels: int,
        subnet: SubnetFactory | None = None,
        mixtures: int = 3,
        init_log_scale: float = 0.0,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {num_channels}; squeeze the input first")
        if mixtures < 1:
            raise ValueError(f"mixtures must be >= 1, got {mixtures}")
        self.num_channels = num_channels
        self.first = num_channels // 2
        self.mixtures = mixtures
        self.cond_channels = cond_channels
        factory = subnet or conv_subnet()
        second = num_channels - self.first
        self.net1 = factory(second + cond_channels, (mixtures + 1) * self.first)
        self.net2 = factory(self.first + cond_channels, (mixtures + 1) * second)
        biases = mexican_hat_biases(init_log_scale, mixtures)[:, None, None, None]
        self.bias1 = nn.Parameter(biases.expand(mixtures, self.first, 1, 1).clone())
        self.bias2 = nn.Parameter(biases.expand(mixtures, second, 1, 1).clone())

    def _shift_log_scale(self, net: nn.Module, bias: Tensor, context: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        inp = context
        if self.cond_channels:
            inp = torch.cat([context, require_cond(self, cond).to(context.dtype)], dim=1)
        out = run_subnet(net, inp)
        b, _, h, w = out.shape
        out = out.reshape(b, self.mixtures + 1, -1, h, w)
        phi = out[:, 1:] + bias.to(out.dtype)
        return out[:, 0], mexican_hat(phi).mean(dim=1)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.first], x[:, self.first :]
        t1, log_s1 = self._shift_log_scale(self.net1, self.bias1, x2, cond)
        y1 = x1 * log_s1.exp() + t1
        t2, log_s2 = self._shift_log_scale(self.net2, self.bias2, y1, cond)
        y2 = x2 * log_s2.exp() + t2
        return torch.cat([y1, y2], dim=1), sum_except_batch(log_s1) + sum_except_batch(log_s2)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        y1, y2 = z[:, : self.first], z[:, self.first :]
        t2, log_s2 = self._shift_log_scale(self.net2, self.bias2, y1, cond)
        x2 = (y2 - t2) * (-log_s2).exp()
        t1, log_s1 = self._shift_log_scale(self.net1, self.bias1, x2, cond)
        x1 = (y1 - t1) * (-log_s1).exp()
        return torch.cat([x1, x2], dim=1), -(sum_except_batch(log_s1) + sum_except_batch(log_s2))
