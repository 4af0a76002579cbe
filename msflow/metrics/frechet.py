r"""The Frechet distance between Gaussians fitted to two sets of features.

For Gaussians :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2, \Sigma_2)` the
squared Frechet (2-Wasserstein) distance is

.. math::

    d^2 = \lVert \mu_1 - \mu_2 \rVert^2
        + \operatorname{Tr}\bigl(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\bigr).

FID is this number for Inception-v3 pool features; msflow computes it on the features of its
own small classifiers (see :mod:`msflow.analysis.features`), which is *not* FID.

The trace of the matrix square root is computed without ``scipy.linalg.sqrtm``:
:math:`\Sigma_1 \Sigma_2` is similar to the symmetric positive semi-definite matrix
:math:`M = \Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}`, so
:math:`\operatorname{Tr}(\Sigma_1 \Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i(M)}`. Two symmetric
eigendecompositions in float64 give it; eigenvalues that round-off pushes below zero are
clipped, so there are never imaginary parts to discard.

Example:
    >>> import torch
    >>> a = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> round(frechet_distance(a, a), 12)
    0.0
    >>> round(gaussian_frechet_distance([0.0, 0.0], [[1.0, 0.0], [0.0, 4.0]], [3.0, 4.0], [[4.0, 0.0], [0.0, 1.0]]), 9)
    27.0
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from msflow.errors import MsflowError


def _as_float64(x: ArrayLike | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def fit_gaussian(features: ArrayLike | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64.

    Raises:
        MsflowError: features that are not a 2-D array of at least two finite rows.

    Example:
        >>> mu, cov = fit_gaussian([[0.0, 1.0], [2.0, 1.0]])
        >>> mu.tolist(), cov.tolist()
        ([1.0, 1.0], [[2.0, 0.0], [0.0, 0.0]])
    """
    f = _as_float64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise MsflowError(f"need features of shape (N >= 2, D) to fit a Gaussian, got {f.shape}")
    if not np.isfinite(f).all():
        raise MsflowError("features contain NaN or infinite values; check the images and the feature network")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    r"""Squared Frechet distance between :math:`\mathcal N(\mu_1, \Sigma_1)` and :math:`\mathcal N(\mu_2, \Sigma_2)`.

    Args:
        mu1: mean ``(D,)`` of the first Gaussian.
        cov1: its covariance ``(D, D)``, symmetric positive semi-definite.
        mu2: mean ``(D,)`` of the second Gaussian.
        cov2: its covariance ``(D, D)``.

    Returns:
        :math:`\lVert\mu_1-\mu_2\rVert^2 + \operatorname{Tr}(\Sigma_1+\Sigma_2-2(\Sigma_1\Sigma_2)^{1/2}) \ge 0`.

    Raises:
        MsflowError: mismatched shapes.

    Example (diagonal covariances: the trace term is the sum of ``(s1 - s2)^2`` over standard deviations):
        >>> gaussian_frechet_distance([1.0], [[9.0]], [0.0], [[1.0]])
        5.0
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    cov1, cov2 = _as_float64(cov1), _as_float64(cov2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise MsflowError(
            f"Frechet distance needs means (D,) and covariances (D, D) of one D, got {mu1.shape}, {cov1.shape}, "
            f"{mu2.shape}, {cov2.shape}"
        )
    root1 = _psd_sqrt(cov1)
    inner = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)
    # Round-off can leave -1e-12 for identical Gaussians; a distance is never negative.
    return max(value, 0.0)


def frechet_distance(features1: ArrayLike | torch.Tensor, features2: ArrayLike | torch.Tensor) -> float:
    """Squared Frechet distance between Gaussians fitted to ``(N1, D)`` and ``(N2, D)`` feature sets.

    Symmetric in its arguments and 0 for identical sets. With ``N`` samples per set the
    estimate is biased upwards by roughly ``O(D / N)``, so compare numbers computed with the
    same ``N`` and the same feature network only.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(4000, 2, generator=g), torch.randn(4000, 2, generator=g) + 1
        >>> round(frechet_distance(a, b), 1)  # |mu1 - mu2|^2 = 2, equal covariances
        2.0
    """
    mu1, cov1 = fit_gaussian(features1)
    mu2, cov2 = fit_gaussian(features2)
    return gaussian_frechet_distance(mu1, cov1, mu2, cov2)


__all__ = ["fit_gaussian", "frechet_distance", "gaussian_frechet_distance"]
