"""Affine and additive coupling layers (RealNVP, Glow) with injectable subnets."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from msflow.core import InvertibleModule, require_cond, sum_except_batch
from msflow.nn.subnets import SubnetFactory, conv_subnet, run_subnet


def _sigmoid_log_scale(raw: Tensor) -> Tensor:
    # Glow: scale = sigmoid(raw + 2) lies in (0, 1) and starts near 0.88 with a zero-init net.
    return F.logsigmoid(raw + 2.0)


def _tanh_log_scale(raw: Tensor) -> Tensor:
    # scale = exp(2 tanh(raw / 2)) lies in (e^-2, e^2) and starts at exactly 1.
    return 2.0 * torch.tanh(raw / 2.0)


def _atan_log_scale(raw: Tensor) -> Tensor:
    # CAFLOW's soft clamp: s = (2 * 0.636) atan(raw) lies in (-2, 2) (0.636 ~ 2 / pi) and starts at
    # 0, so the scale exp(s) starts at 1 and cannot blow up whatever the net outputs.
    return 1.272 * torch.atan(raw)


SCALE_BOUND = 2.0
"""The factor the ``"bounded"`` scale stays within: ``s`` in ``(1 / SCALE_BOUND, SCALE_BOUND)``."""


def _bounded_log_scale(raw: Tensor) -> Tensor:
    # Liao & He (paper 004, sec. 2.3): bounded gradients need every block and its inverse to be
    # Lipschitz. Glow's sigmoid scale lies in (0, 1), so its inverse divides by a scale that can
    # approach 0 and, at sampling time, blow a region of latents up to saturated pixels. Here
    # log s = log(B) tanh(raw / log B): s in (1/B, B) both ways, s = 1 and ds/draw = 1 at raw = 0.
    bound = math.log(SCALE_BOUND)
    return bound * torch.tanh(raw / bound)


WIDE_BOUND = 6.0
"""``|s| < WIDE_BOUND`` for the ``"wide"`` scale: a factor up to ``e^6 ~ 400`` either way."""


def _wide_log_scale(raw: Tensor) -> Tensor:
    # For maps that normalise data whose scale varies by orders of magnitude from pixel to pixel
    # (MRCNF's detail coefficients: ~0.0014 in flat regions, ~0.3 at edges): s = 6 tanh(raw / 6)
    # starts at 0 with slope 1 and stays finite whatever the net outputs.
    return WIDE_BOUND * torch.tanh(raw / WIDE_BOUND)


LOG_SCALES: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": _sigmoid_log_scale,
    "wide": _wide_log_scale,
    "tanh": _tanh_log_scale,
    "atan": _atan_log_scale,
    "bounded": _bounded_log_scale,
}


class _Coupling(InvertibleModule):
    """Shared part of couplings: split channels, run the subnet on the kept half (and cond)."""

    def __init__(
        self, num_channels: int, params_per_channel: int, subnet: SubnetFactory | None, cond_channels: int
    ) -> None:
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {num_channels}; squeeze the input first")
        self.num_channels = num_channels
        self.keep = num_channels // 2
        self.cond_channels = cond_channels
        factory = subnet or conv_subnet()
        self.net = factory(self.keep + cond_channels, params_per_channel * (num_channels - self.keep))

    def _params(self, x_keep: Tensor, cond: Any) -> Tensor:
        inp = x_keep
        if self.cond_channels:
            inp = torch.cat([x_keep, require_cond(self, cond).to(x_keep.dtype)], dim=1)
        return run_subnet(self.net, inp)


class AffineCoupling(_Coupling):
    r"""Affine coupling with a bounded scale.

    .. math::

        x = [x_a, x_b],\quad (t, r) = \mathrm{NN}(x_a[, c]),\quad
        z = [x_a,\; x_b\, e^{s(r)} + t],\quad \log|\det| = \textstyle\sum s(r)

    with ``s = log sigmoid(r + 2)`` (Glow), ``s = 2 tanh(r / 2)``, ``s = 1.272 atan(r)`` (CAFLOW) or
    ``s = log 2 tanh(r / log 2)`` (``"bounded"``: the scale and its inverse stay below 2).
    The inverse recomputes ``NN(x_a)`` from the untouched half, so it is exact whatever precision
    the net runs in.

    Args:
        num_channels: channels of ``x``; the first ``C // 2`` are kept.
        subnet: factory ``(in, out) -> nn.Module``; its last layer should start at zero.
        scale: ``"sigmoid"``, ``"tanh"``, ``"atan"`` or ``"bounded"``.
        cond_channels: channels of a condition feature map concatenated to the subnet input.

    Example:
        >>> import torch
        >>> from msflow.nn import conv_subnet
        >>> layer = AffineCoupling(4, subnet=conv_subnet(hidden=8), scale="tanh")
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ld = layer(x)
        >>> bool(torch.allclose(z, x)), ld.tolist()
        (True, [0.0, 0.0])
    """

    def __init__(
        self,
        num_channels: int,
        subnet: SubnetFactory | None = None,
        scale: str = "sigmoid",
        cond_channels: int = 0,
    ) -> None:
        if scale not in LOG_SCALES:
            raise ValueError(f"unknown coupling scale {scale!r}; choose one of {sorted(LOG_SCALES)}")
        super().__init__(num_channels, 2, subnet, cond_channels)
        self.log_scale_fn = LOG_SCALES[scale]

    def _shift_log_scale(self, x_keep: Tensor, cond: Any) -> tuple[Tensor, Tensor]:
        h = self._params(x_keep, cond)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, self.log_scale_fn(raw)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x_keep, x_change = x[:, : self.keep], x[:, self.keep :]
        shift, log_s = self._shift_log_scale(x_keep, cond)
        z = torch.cat([x_keep, x_change * log_s.exp() + shift], dim=1)
        return z, sum_except_batch(log_s)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        z_keep, z_change = z[:, : self.keep], z[:, self.keep :]
        shift, log_s = self._shift_log_scale(z_keep, cond)
        x = torch.cat([z_keep, (z_change - shift) * (-log_s).exp()], dim=1)
        return x, -sum_except_batch(log_s)


class AdditiveCoupling(_Coupling):
    r"""Volume-preserving coupling (NICE): ``z = [x_a, x_b + NN(x_a[, c])]``, log-det 0.

    Example:
        >>> import torch
        >>> from msflow.nn import conv_subnet
        >>> layer = AdditiveCoupling(2, subnet=conv_subnet(hidden=8))
        >>> layer(torch.randn(1, 2, 2, 2))[1].tolist()
        [0.0]
    """

    def __init__(self, num_channels: int, subnet: SubnetFactory | None = None, cond_channels: int = 0) -> None:
        super().__init__(num_channels, 1, subnet, cond_channels)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x_keep, x_change = x[:, : self.keep], x[:, self.keep :]
        z = torch.cat([x_keep, x_change + self._params(x_keep, cond)], dim=1)
        return z, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        z_keep, z_change = z[:, : self.keep], z[:, self.keep :]
        x = torch.cat([z_keep, z_change - self._params(z_keep, cond)], dim=1)
        return x, z.new_zeros(z.shape[0])


COUPLINGS: dict[str, type[_Coupling]] = {"affine": AffineCoupling, "additive": AdditiveCoupling}
