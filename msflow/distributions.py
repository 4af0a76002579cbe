"""Base distributions. Priors with parameters are invertible standardisations in transforms/split.py,
so the base is always the standard Gaussian here, and temperature scales its samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msflow.core import sum_except_batch

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    r"""``log N(z; 0, I)`` summed over all but the batch dimension: ``-(z^2 + log 2 pi) / 2``.

    Example:
        >>> import torch
        >>> round(standard_normal_log_prob(torch.zeros(1, 2)).item(), 4)
        -1.8379
    """
    return sum_except_batch(-0.5 * (z * z + _LOG_2PI))


def standard_normal_sample(
    shape: tuple[int, ...],
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``temperature * N(0, I)`` of ``shape`` (temperature < 1 trades diversity for quality)."""
    where = generator.device if generator is not None else device
    return (torch.randn(shape, generator=generator, device=where, dtype=dtype) * temperature).to(device)
