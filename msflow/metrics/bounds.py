"""The best linear flow's bits/dim: the PPCA reference point of Liao & He (paper 004, eq. 6 and 21).

A linear flow ``z = W (v - b)`` with a standard-normal base is a Gaussian model of ``v`` with
covariance ``(W^T W)^{-1}``. Its log-likelihood averaged over the data is maximised by
``b = mean(v)``, ``W = U Lambda^{-1/2} V^T`` with ``V, Lambda`` the eigenvectors and eigenvalues of
the data covariance ``S'`` (eq. 21), where it equals

.. math::

    \\mathcal L_{\\max} = -\\tfrac12 \\Big( d \\log 2\\pi + d + \\sum_{i=1}^d \\log \\lambda_i \\Big)

per image (eq. 6 with the dataset covariance). Any flow that cannot beat this number has not
learned more than second-order statistics.

Why not the per-sample form: eq. 6 as written takes the eigenvalues of ``S = x x^T`` for each
image. That matrix has rank one, so ``d - 1`` of its eigenvalues are 0, ``sum log lambda_i`` is
``-inf`` and the "bound" is an infinite likelihood: a linear map fitted to one point can squeeze
it to a delta. The meaningful quantity is the PPCA one (eq. 21), with ``S'`` the covariance of
the whole (dequantized) training set, which is what is computed here. Dequantization noise makes
``S'`` full rank even for pixels that are constant in the data (MNIST's border).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from msflow.errors import DataError
from msflow.metrics.bpd import bits_per_dim, mean_and_stderr


def _dequantized(images: Tensor, n_bits: int, seed: int) -> Tensor:
    """``(N, D)`` float64 ``v = (x + u) / 2^bits`` with a seeded uniform draw."""
    generator = torch.Generator().manual_seed(seed)
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    return (x + torch.rand(x.shape, generator=generator, dtype=torch.float64)) / 2**n_bits


def linear_flow_bound(train: Tensor, test: Tensor | None = None, n_bits: int = 8, seed: int = 0) -> dict[str, float]:
    """bits/dim of the maximum-likelihood linear (Gaussian) flow on integer images.

    Args:
        train: uint8 images ``(N, C, H, W)`` the Gaussian is fitted to; needs ``N > C*H*W``.
        test: optional held-out images, scored under the fitted Gaussian.
        n_bits: bits per sub-pixel.
        seed: seed of the dequantization noise.

    Returns:
        ``train_bpd`` (eq. 6 on the training set, the optimum), and with ``test`` also
        ``test_bpd`` and ``test_bpd_stderr`` (mean and standard error over test images),
        plus ``dims`` and ``images``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randint(0, 256, (5000, 1, 4, 4), dtype=torch.uint8, generator=g)
        >>> # uniform pixels: 8 + log2(2 pi e / 12) / 2 = 8.25 bits/dim for the best Gaussian
        >>> round(linear_flow_bound(x)["train_bpd"], 2)
        8.25
    """
    n, dims = train.shape[0], math.prod(train.shape[1:])
    if n <= dims:
        raise DataError(
            f"the linear bound needs more images than dimensions to fit a full covariance: {n} images of {dims} "
            "dimensions; use a larger dataset or smaller images"
        )
    v = _dequantized(train, n_bits, seed)
    mean = v.mean(0)
    cov = torch.cov(v.T, correction=0)  # the maximum-likelihood covariance S'
    eigenvalues = torch.linalg.eigvalsh(cov)
    log_lik = -0.5 * (dims * math.log(2 * math.pi) + dims + eigenvalues.log().sum())
    result = {
        "train_bpd": bits_per_dim(log_lik.reshape(1), dims, n_bits).item(),
        "dims": dims,
        "images": n,
    }
    if test is not None:
        result.update(_test_bpd(test, mean, cov, n_bits, seed + 1))
    return result


def _test_bpd(test: Tensor, mean: Tensor, cov: Tensor, n_bits: int, seed: int) -> dict[str, float]:
    v = _dequantized(test, n_bits, seed)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    values = bits_per_dim(gaussian.log_prob(v), v.shape[1], n_bits)
    bpd, stderr = mean_and_stderr(values)
    return {"test_bpd": bpd, "test_bpd_stderr": stderr}
