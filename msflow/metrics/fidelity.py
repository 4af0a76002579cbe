r"""Fidelity of a generated image to a reference: PSNR, SSIM and RMSE on uint8 images.

.. math::

    \mathrm{PSNR} = 10 \log_{10} \frac{255^2}{\operatorname{mean}(x - y)^2}, \qquad
    \mathrm{RMSE} = \sqrt{\operatorname{mean}(x - y)^2}

SSIM is scikit-image's ``structural_similarity`` (Wang et al. 2004: 7x7 uniform window, data
range 255, averaged over channels). Images are ``(C, H, W)`` uint8 tensors, grey or RGB;
``luminance=True`` scores the ITU-R 601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of RGB images
(the convention of super-resolution papers that report Y-channel figures).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from msflow._optional import require
from msflow.errors import ShapeError

_LUMA = (0.299, 0.587, 0.114)


def _pair(x: Tensor, y: Tensor, luminance: bool) -> tuple[np.ndarray, np.ndarray]:
    if x.shape != y.shape or x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ShapeError(
            f"compare two (C, H, W) images of one shape with C = 1 or 3, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    a, b = (t.detach().cpu().to(torch.float64).numpy() for t in (x, y))
    if luminance and a.shape[0] == 3:
        weights = np.asarray(_LUMA)[:, None, None]
        a, b = (weights * a).sum(0, keepdims=True), (weights * b).sum(0, keepdims=True)
    return a, b


def psnr(x: Tensor, y: Tensor, luminance: bool = False) -> float:
    """Peak signal-to-noise ratio in dB of uint8 images ``x`` against ``y`` (inf when equal).

    Example:
        >>> import torch
        >>> a = torch.zeros(1, 4, 4, dtype=torch.uint8)
        >>> round(psnr(a + 1, a), 2)  # 10 log10(255^2 / 1)
        48.13
    """
    a, b = _pair(x, y, luminance)
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def rmse(x: Tensor, y: Tensor, luminance: bool = False) -> float:
    """Root-mean-square error of uint8 images, on the 0-255 scale."""
    a, b = _pair(x, y, luminance)
    return float(np.sqrt(((a - b) ** 2).mean()))


def ssim(x: Tensor, y: Tensor, luminance: bool = False) -> float:
    """Structural similarity in [-1, 1] of uint8 images (scikit-image; needs images of 7x7 or more)."""
    structural_similarity = require("skimage.metrics", "metrics", "SSIM").structural_similarity
    a, b = _pair(x, y, luminance)
    if min(a.shape[1:]) < 7:
        raise ShapeError(f"SSIM uses a 7x7 window: images must be at least 7x7, got {a.shape[1]}x{a.shape[2]}")
    return float(structural_similarity(a, b, data_range=255.0, channel_axis=0))


__all__ = ["psnr", "rmse", "ssim"]


def detail_ratio(x: Tensor, reference: Tensor) -> float:
    r"""High-frequency energy of ``x`` relative to ``reference``: ``var(L * x) / var(L * reference)``.

    ``L`` is the 3x3 Laplacian, applied to the luma of RGB images, so the ratio says how much
    fine detail (edges, texture, noise) an output has compared with the ground truth: a blurry
    upsampling scores below 1, an output with the truth's texture near 1 (Winkler et al.'s
    Figure 3: hotter samples show more high frequencies).

    Example:
        >>> import torch
        >>> flat = torch.full((1, 8, 8), 100, dtype=torch.uint8)
        >>> noisy = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
        >>> detail_ratio(flat, noisy)
        0.0
    """
    a, b = _pair(x, reference, luminance=True)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)[None, None]

    def energy(image: np.ndarray) -> float:
        plane = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float64).mean(0, keepdim=True)
        return torch.nn.functional.conv2d(plane[None], kernel).var().item()

    ref = energy(b)
    if ref == 0:
        raise ShapeError("the reference has no high-frequency content (a constant image): no ratio to report")
    return energy(a) / ref
