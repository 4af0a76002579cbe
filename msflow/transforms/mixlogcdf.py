"""Mixture-of-logistics CDF coupling (Flow++, Ho et al. 2019), the MixLogCDF coupling of mAR-SCF."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from msflow.core import sum_except_batch
from msflow.nn.subnets import SubnetFactory
from msflow.transforms.coupling import LOG_SCALES, _Coupling

MIN_LOG_SCALE = -7.0
"""Lower clamp of the components' log-scales (Flow++): keeps every logistic slope below e^7."""


def _mixture_terms(x: Tensor, logit_pi: Tensor, mu: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``log F(x)``, ``log(1 - F(x))`` and ``log F'(x)`` of the mixture; components on dim 2."""
    log_pi = F.log_softmax(logit_pi, dim=2)
    u = (x.unsqueeze(2) - mu) * (-log_s).exp()
    log_cdf = F.logsigmoid(u)
    log_sf = F.logsigmoid(-u)  # log(1 - sigmoid(u)), accurate where sigmoid(u) rounds to 1
    log_f = torch.logsumexp(log_pi + log_cdf, dim=2)
    log_1mf = torch.logsumexp(log_pi + log_sf, dim=2)  # 1 - F = sum_k pi_k sigmoid(-u_k) exactly
    log_pdf = torch.logsumexp(log_pi + log_cdf + log_sf - log_s, dim=2)
    return log_f, log_1mf, log_pdf


def mixlog_logit_cdf(x: Tensor, logit_pi: Tensor, mu: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor]:
    r"""``sigmoid^{-1}(MixLogCDF(x))`` and its log-derivative, elementwise.

    ``x`` is ``(B, C, H, W)``; the mixture parameters are ``(B, C, K, H, W)``. Computed as
    ``log F - log(1 - F)`` from log-sigmoids, so neither tail needs clamping: the result is
    accurate where ``F`` itself rounds to 0 or 1.

    Example:
        >>> import torch
        >>> x = torch.tensor([-3.0, 0.0, 40.0]).view(1, 1, 1, 3)
        >>> p = torch.zeros(1, 1, 1, 1, 3)  # one standard logistic: the map is the identity
        >>> y, log_dy = mixlog_logit_cdf(x, p, p, p)
        >>> [round(v, 4) for v in y.flatten().tolist()], log_dy.abs().max().item() < 1e-6
        ([-3.0, 0.0, 40.0], True)
    """
    log_f, log_1mf, log_pdf = _mixture_terms(x, logit_pi, mu, log_s)
    return log_f - log_1mf, log_pdf - log_f - log_1mf


def mixlog_logit_cdf_inverse(
    y: Tensor, logit_pi: Tensor, mu: Tensor, log_s: Tensor, tol: float | None = None, max_halvings: int = 100
) -> Tensor:
    r"""Solve ``sigmoid^{-1}(MixLogCDF(x)) = y`` for ``x`` by bisection, then one Newton step.

    The bracket is exact: each component's quantile is ``mu_k + s_k y``, and a mixture's CDF
    lies between its components', so the root is in ``[min_k(mu_k + s_k y), max_k(mu_k + s_k y)]``.
    Bisection halves it until it is narrower than ``tol`` (default ``1e-12`` in float64,
    ``1e-6`` otherwise; at most ``max_halvings``). The final Newton step from the detached
    bisection point ``x*``,

    .. math::

        x = x^* - \frac{g(x^*) - y}{g'(x^*)}, \qquad g = \sigma^{-1}\circ\mathrm{MixLogCDF},

    removes most of the remaining error and, because ``x*`` carries no graph, gives autograd the
    implicit-function derivatives ``dx/dy = 1/g'`` and ``dx/dθ = -(∂g/∂θ)/g'``: the inverse
    is differentiable (sampling-direction Jacobians, latent-space optimisation).

    Accuracy is ``tol`` in ``x`` wherever ``g`` is resolvable in the working precision. A mixture
    whose weight concentrates on narrow components far apart has plateaus where ``g`` is
    constant to machine precision; there ``y`` determines ``x`` only to ``eps(y) / g'``, and the
    inverse returns a point of the plateau (no clamping of probabilities is involved anywhere:
    ``g`` is evaluated in log space, and the bracket needs no sigmoid of ``y``).

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> p = [torch.randn(2, 1, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
        >>> x = 5 * torch.randn(2, 1, 4, 4, generator=gen, dtype=torch.float64)
        >>> y, _ = mixlog_logit_cdf(x, *p)
        >>> (mixlog_logit_cdf_inverse(y, *p) - x).abs().max().item() < 1e-10
        True
    """
    if tol is None:
        tol = 1e-12 if y.dtype == torch.float64 else 1e-6
    with torch.no_grad():
        quantiles = mu + log_s.exp() * y.unsqueeze(2)
        lo, hi = quantiles.amin(dim=2), quantiles.amax(dim=2)
        width = float((hi - lo).max()) if y.numel() else 0.0
        halvings = 0 if width <= tol else max_halvings
        if 0 < halvings and math.isfinite(width):
            halvings = min(max_halvings, math.ceil(math.log2(width / tol)))
        for _ in range(halvings):
            mid = 0.5 * (lo + hi)
            below = mixlog_logit_cdf(mid, logit_pi, mu, log_s)[0] < y
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        x_star, width = 0.5 * (lo + hi), hi - lo
    g, log_dg = mixlog_logit_cdf(x_star, logit_pi, mu, log_s)
    step = (g - y) * (-log_dg).exp()
    # The root lies within half the final bracket of x*. A step longer than the bracket comes from a
    # plateau where g' underflows (g is flat to machine precision): skip its value, keep its gradient.
    step = torch.where(step.abs() <= width, step, step - step.detach())
    return x_star - step


class MixLogCDFCoupling(_Coupling):
    r"""Coupling through a mixture of logistic CDFs (Flow++).

    .. math::

        x = [x_a, x_b],\quad (b, \tilde a, \pi, \mu, s) = \mathrm{NN}(x_a[, c]),\quad
        z_b = e^{a}\, \sigma^{-1}\!\Big(\textstyle\sum_{k=1}^{K} \pi_k\,
              \sigma\big((x_b - \mu_k) / s_k\big)\Big) + b

    with ``a = 2 tanh(ã / 2)``, ``π = softmax``, ``log s_k`` clamped at
    :data:`MIN_LOG_SCALE`. Elementwise, so the exact log-det is

    .. math::

        \log|\det| = \textstyle\sum \big(a + \log F'(x_b) - \log F(x_b) - \log(1 - F(x_b))\big).

    The inverse solves ``sigma^{-1}(F(x_b)) = (z_b - b) e^{-a}`` by bisection to ``tol`` (see
    :func:`mixlog_logit_cdf_inverse`); it recomputes ``NN(x_a)`` from the untouched half.
    With the zero-initialised subnet every component is the standard logistic, ``a = b = 0``, and
    the layer starts as the identity.

    Args:
        num_channels: channels of ``x``; the first ``C // 2`` are kept.
        subnet: factory ``(in, out) -> nn.Module``; its last layer should start at zero.
        mixtures: logistic components ``K`` (32 in Flow++ and mAR-SCF).
        cond_channels: channels of a condition feature map concatenated to the subnet input.
        tol: bisection tolerance of the inverse (``None``: 1e-12 in float64, 1e-6 otherwise).

    Example:
        >>> import torch
        >>> from msflow.nn import conv_subnet
        >>> layer = MixLogCDFCoupling(4, subnet=conv_subnet(hidden=8), mixtures=3)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ld = layer(x)
        >>> bool(torch.allclose(z, x, atol=1e-5)), ld.abs().max().item() < 1e-4
        (True, True)
    """

    def __init__(
        self,
        num_channels: int,
        subnet: SubnetFactory | None = None,
        mixtures: int = 32,
        cond_channels: int = 0,
        tol: float | None = None,
    ) -> None:
        if mixtures < 1:
            raise ValueError(f"need at least one mixture component, got {mixtures}")
        super().__init__(num_channels, 2 + 3 * mixtures, subnet, cond_channels)
        self.mixtures = mixtures
        self.tol = tol

    def _mixture_params(self, x_keep: Tensor, cond: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        h = self._params(x_keep, cond)
        b, _, height, width = h.shape
        h = h.view(b, self.num_channels - self.keep, 2 + 3 * self.mixtures, height, width)
        k = self.mixtures
        shift, log_a = h[:, :, 0], LOG_SCALES["tanh"](h[:, :, 1])
        logit_pi, mu, log_s = h[:, :, 2 : 2 + k], h[:, :, 2 + k : 2 + 2 * k], h[:, :, 2 + 2 * k :]
        return shift, log_a, logit_pi, mu, log_s.clamp(min=MIN_LOG_SCALE)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x_keep, x_change = x[:, : self.keep], x[:, self.keep :]
        shift, log_a, *mixture = self._mixture_params(x_keep, cond)
        y, log_dy = mixlog_logit_cdf(x_change, *mixture)
        z = torch.cat([x_keep, y * log_a.exp() + shift], dim=1)
        return z, sum_except_batch(log_a + log_dy)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        z_keep, z_change = z[:, : self.keep], z[:, self.keep :]
        shift, log_a, *mixture = self._mixture_params(z_keep, cond)
        x_change = mixlog_logit_cdf_inverse((z_change - shift) * (-log_a).exp(), *mixture, tol=self.tol)
        _, log_dy = mixlog_logit_cdf(x_change, *mixture)
        return torch.cat([z_keep, x_change], dim=1), -sum_except_batch(log_a + log_dy)


__all__ = ["MIN_LOG_SCALE", "MixLogCDFCoupling", "mixlog_logit_cdf", "mixlog_logit_cdf_inverse"]
