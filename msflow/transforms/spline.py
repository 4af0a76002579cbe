"""Monotonic rational-quadratic activation with slopes in (0, 1] (Liao & He, eq. 16-17, appendix C)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import InvertibleModule, sum_except_batch


def max_bin_ratio(alpha_min: Tensor) -> Tensor:
    r"""Largest bin ratio ``delta`` for which a rational-quadratic bin keeps its slope <= 1.

    Inside a bin with knot slopes ``a, b`` and ratio ``delta`` the slope of eq. 17 never exceeds
    ``max(a, b, 2 delta^2 / (min(a, b) + delta))`` (the middle of the bin bulges when the knot
    slopes are small). With ``a, b < 1`` that is at most 1 when
    ``2 delta^2 - delta <= min(a, b)``, i.e. ``delta <= (1 + sqrt(1 + 8 min(a, b))) / 4``,
    which lies in (1/2, 1) and equals 1 only for knot slopes of 1.
    """
    return (1.0 + torch.sqrt(1.0 + 8.0 * alpha_min)) / 4.0


class RQActivation(InvertibleModule):
    r"""Elementwise monotonic rational-quadratic spline, contractive: ``0 < f' <= 1``.

    Each channel has ``I`` bins inside ``[-w, w]``. In bin ``i`` with knots ``(x_i, y_i)``,
    knot slopes ``alpha_i``, width ``Delta_x``, height ``Delta_y``, ratio
    ``delta = Delta_y / Delta_x`` and ``xi = (x - x_i) / Delta_x`` (eq. 16-17):

    .. math::

        f(x) = y_i + \frac{\Delta_y [\delta \xi^2 + \alpha_i \xi (1 - \xi)]}
                          {\delta + \rho \xi (1 - \xi)}, \qquad
        f'(x) = \frac{\delta^2 [\alpha_{i+1} \xi^2 + 2 \delta \xi (1 - \xi) + \alpha_i (1 - \xi)^2]}
                     {[\delta + \rho \xi (1 - \xi)]^2}

    with ``rho = alpha_i + alpha_{i+1} - 2 delta``. Knots follow appendix C (eq. 27-32):
    widths ``softmax(theta_x)``, ``x_i = (2 cumsum_i - 1) w``, heights = ratio x width,
    ``y_i = (2 cumsum_i - H) w`` with ``H`` the total height, so ``[-w, w]`` maps onto
    ``[-H w, H w]``; knot slopes ``alpha = sigmoid(theta_a)``. The inverse solves the bin's
    quadratic in closed form.

    Two departures from the paper, both to keep its stated property ``f' <= 1``:

    - eq. 28 lets the bin ratio reach 1 whatever the knot slopes, and then the slope inside a
      bin reaches ``2 delta^2 / (alpha + delta)``, nearly 2 for small ``alpha``. Here
      ``delta = sigmoid(theta_y) * max_bin_ratio(min(alpha_i, alpha_{i+1}))``, which provably
      (see :func:`max_bin_ratio`) keeps every slope <= 1.
    - Outside ``[-w, w]`` the paper uses one more bin reaching to a large fixed boundary; here
      the spline continues linearly with the boundary knot's slope (C^1, slope in (0, 1),
      trivially invertible), which is what that far bin looks like near the box.

    At initialisation every knot slope and bin ratio is ``beta``, so ``f(x) = beta x``
    exactly: with ``beta = 1/(kappa s)`` the block ``f_act . f_aff . f_conv`` starts as the
    identity (eq. 18).

    Args:
        num_channels: channels; each has its own spline.
        bins: inner bins ``I`` (the paper uses 16).
        beta: initial slope, in (0, 1) (a slope of exactly 1 needs ``sigmoid = 1``).
        width: initial half-width ``w`` of the box (learned, kept positive).

    Example:
        >>> import torch
        >>> act = RQActivation(2, bins=4, beta=0.5)
        >>> z, ld = act(torch.tensor([[[[1.0]], [[-3.0]]]]))
        >>> z.flatten().tolist(), round(ld.item(), 4) == round(2 * math.log(0.5), 4)
        ([0.5, -1.5], True)
    """

    def __init__(self, num_channels: int, bins: int = 16, beta: float = 0.9, width: float = 3.0) -> None:
        super().__init__()
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1) (slopes are sigmoids), got {beta}; the paper advises [0.5, 1)")
        if bins < 1 or not width > 0:
            raise ValueError(f"need bins >= 1 and width > 0, got bins={bins}, width={width}")
        self.num_channels = num_channels
        self.bins = bins
        beta_t = torch.tensor(beta, dtype=torch.float64)
        ratio = beta_t / max_bin_ratio(beta_t)
        self.theta_x = nn.Parameter(torch.zeros(num_channels, bins))
        self.theta_y = nn.Parameter(torch.full((num_channels, bins), float(torch.logit(ratio))))
        self.theta_a = nn.Parameter(torch.full((num_channels, bins + 1), math.log(beta / (1 - beta))))
        self.log_width = nn.Parameter(torch.full((num_channels, 1), math.log(width)))

    def knots(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, alpha)``, each ``(C, I + 1)``: knot positions, values and slopes."""
        theta_x, theta_y, theta_a = (t.to(dtype) for t in (self.theta_x, self.theta_y, self.theta_a))
        w = self.log_width.to(dtype).exp()
        alpha = torch.sigmoid(theta_a)
        width = F.softmax(theta_x, dim=1)
        ratio = torch.sigmoid(theta_y) * max_bin_ratio(torch.minimum(alpha[:, :-1], alpha[:, 1:]))
        height = ratio * width
        pad = (1, 0)
        x = (2 * F.pad(width.cumsum(1), pad) - 1) * w
        cum_h = F.pad(height.cumsum(1), pad)
        y = (2 * cum_h - cum_h[:, -1:]) * w
        return x, y, alpha

    def _per_channel(self, t: Tensor) -> Tensor:
        return t.transpose(0, 1).reshape(self.num_channels, -1)

    def _back(self, flat: Tensor, like: Tensor) -> Tensor:
        c, *rest = like.transpose(0, 1).shape
        return flat.reshape(c, *rest).transpose(0, 1)

    def _apply_spline(self, t: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        xk, yk, alpha = self.knots(t.dtype)
        src, dst = (yk, xk) if inverse else (xk, yk)
        v = self._per_channel(t)
        # The bin formulas see points clamped into the box, so the branch torch.where discards
        # for tail points stays finite and cannot put NaN into the gradients.
        inside = torch.minimum(torch.maximum(v, src[:, :1]), src[:, -1:])
        idx = (torch.searchsorted(src.contiguous(), inside.contiguous()) - 1).clamp(0, self.bins - 1)
        x0, x1, y0, y1 = (k.gather(1, i) for k, i in ((xk, idx), (xk, idx + 1), (yk, idx), (yk, idx + 1)))
        a0, a1 = alpha.gather(1, idx), alpha.gather(1, idx + 1)
        dx, dy = x1 - x0, y1 - y0
        delta = dy / dx
        rho = a0 + a1 - 2 * delta
        if inverse:
            s = inside - y0
            a = dy * (delta - a0) + s * rho
            b = dy * a0 - s * rho
            c = -delta * s
            xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0))).clamp_max(-torch.finfo(t.dtype).tiny)
            out = x0 + xi * dx
        else:
            xi = (inside - x0) / dx
            out = y0 + dy * (delta * xi * xi + a0 * xi * (1 - xi)) / (delta + rho * xi * (1 - xi))
        xi = xi.clamp(0, 1)
        u = xi * (1 - xi)
        slope = delta**2 * (a1 * xi * xi + 2 * delta * u + a0 * (1 - xi) ** 2) / (delta + rho * u) ** 2
        # Linear tails beyond the box, with the slope of the boundary knot.
        lo, hi = v < src[:, :1], v > src[:, -1:]
        a_lo, a_hi = alpha[:, :1].expand_as(v), alpha[:, -1:].expand_as(v)
        if inverse:
            out = torch.where(lo, xk[:, :1] + (v - yk[:, :1]) / a_lo, out)
            out = torch.where(hi, xk[:, -1:] + (v - yk[:, -1:]) / a_hi, out)
        else:
            out = torch.where(lo, yk[:, :1] + (v - xk[:, :1]) * a_lo, out)
            out = torch.where(hi, yk[:, -1:] + (v - xk[:, -1:]) * a_hi, out)
        slope = torch.where(lo, a_lo, torch.where(hi, a_hi, slope))
        return self._back(out, t), self._back(slope.log(), t)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        z, log_slope = self._apply_spline(x, inverse=False)
        return z, sum_except_batch(log_slope)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x, log_slope = self._apply_spline(z, inverse=True)
        return x, -sum_except_batch(log_slope)
