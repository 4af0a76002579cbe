"""The one bits-per-dimension function (DESIGN.md section 6)."""

from __future__ import annotations

import math

from torch import Tensor


def bits_per_dim(log_p_v: Tensor, num_dims: int, n_bits: int = 8, log_q: Tensor | float = 0.0) -> Tensor:
    r"""Bits per dimension of integer data from the density of its dequantized version.

    .. math::

        \mathrm{bpd} = \frac{-\log p(v) + \log q(u \mid x) + D\, b \log 2}{D \log 2},
        \qquad v = (x + u) / 2^b

    ``log p(v)`` is the density on [0, 1)^D with every preprocessing log-det included; the
    ``D b log 2`` term converts it to the density of ``x + u`` on the integer grid's scale. For
    uniform noise ``log q = 0`` and the result upper-bounds the discrete model's bits/dim.

    Args:
        log_p_v: ``(B,)`` log-density of the dequantized images, in nats.
        num_dims: ``D = C * H * W``.
        n_bits: bits per sub-pixel of the data (8 for uint8 images).
        log_q: ``(B,)`` log-density of the dequantization noise (0 for uniform).

    Example:
        >>> import torch
        >>> bits_per_dim(torch.zeros(1), num_dims=784).item()  # uniform density on [0,1)^D
        8.0
    """
    return (-log_p_v + log_q + num_dims * n_bits * math.log(2.0)) / (num_dims * math.log(2.0))


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean of a 1-D tensor (as reported for test bits/dim)."""
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no values to average: the evaluated dataset is empty")
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return values.mean().item(), std / math.sqrt(n)
