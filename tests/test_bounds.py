"""The linear-flow (PPCA) bound of Liao & He, eq. 6 / eq. 21."""

from __future__ import annotations

import math

import pytest
import torch

from msflow.cli import main
from msflow.data import get_dataset
from msflow.errors import DataError
from msflow.metrics import bits_per_dim, linear_flow_bound
from msflow.metrics.bounds import _dequantized


def test_eq6_equals_the_fitted_gaussians_mean_log_likelihood() -> None:
    # eq. 6 is the average log-likelihood of the training data under its ML Gaussian.
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3000, 2, 3, 3, generator=g) ** 2 * 255).to(torch.uint8)
    v = _dequantized(x, 8, seed=0)
    cov = torch.cov(v.T, correction=0)
    gaussian = torch.distributions.MultivariateNormal(v.mean(0), covariance_matrix=cov)
    direct = bits_per_dim(gaussian.log_prob(v), v.shape[1]).mean().item()
    assert linear_flow_bound(x, seed=0)["train_bpd"] == pytest.approx(direct, abs=1e-9)


def test_gaussian_data_reaches_its_entropy() -> None:
    # Integer data from a correlated Gaussian with a wide covariance: the bound approaches the
    # differential entropy of the continuous Gaussian on the 0..255 scale, in bits per dim.
    g = torch.Generator().manual_seed(1)
    d, n = 4, 200_000
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 6
    cov = a @ a.T + 25 * torch.eye(d, dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + 128
    x = z.floor().clamp(0, 255).to(torch.uint8).reshape(n, 1, 2, 2)
    entropy_nats = 0.5 * (d * math.log(2 * math.pi * math.e) + torch.logdet(cov).item())
    expected = entropy_nats / (d * math.log(2))
    result = linear_flow_bound(x, x[:1000], seed=0)
    assert result["train_bpd"] == pytest.approx(expected, abs=0.01)
    assert result["test_bpd"] == pytest.approx(expected, abs=0.1)


def test_needs_more_images_than_dimensions() -> None:
    # With N <= D the sample covariance is singular: the same degeneracy as the per-sample
    # rank-one S of eq. 6, where a linear map can squeeze the data to a point.
    with pytest.raises(DataError, match="more images than dimensions"):
        linear_flow_bound(torch.zeros(10, 1, 4, 4, dtype=torch.uint8))


def test_cli_prints_the_bound_of_the_datasets_splits(capsys: pytest.CaptureFixture) -> None:
    assert main(["bound", "digits8", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    # the same numbers as the library's bound of the train and test splits, with the same noise seed
    train, test = get_dataset("digits8", "train"), get_dataset("digits8", "test")
    r = linear_flow_bound(train.images, test.images, n_bits=train.n_bits, seed=3)
    assert f"on digits8 ({len(train)} training images, 64 dims):" in out
    assert f"training-set optimum (eq. 6): {r['train_bpd']:.4f} bits/dim" in out
    assert f"test images under that Gaussian: {r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f} bits/dim" in out
    assert 0 < r["train_bpd"] < r["test_bpd"] < 8  # a Gaussian fitted to 1438 images overfits them
