"""Multi-resolution flows (MRCNF): pyramid maps, eq. 11 in closed form, exactness, levels, superres.

The pyramid maps are checked as 4x4 matrices (eq. 6 and 7, their determinants and the exact
average); a container whose levels are Gaussian stubs must give eq. 11 computed by hand; with
identity levels and multi-resolution noise the model must be exactly ``N(0, I)`` on ``v``; a
tiny float64 model's log-det must be the slogdet of its autograd Jacobian; levels must be
independent; super-resolved 2x2 blocks must average to their input pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import msflow
from msflow.core import InvertibleModule
from msflow.distributions import standard_normal_log_prob
from msflow.errors import ShapeError
from msflow.metrics import bits_per_dim
from msflow.models.mrcnf import cnf_density
from msflow.models.multires import MultiResolutionFlow, build_multires
from msflow.transforms import (
    PYRAMIDS,
    HaarPyramid,
    Logit,
    ODESolverConfig,
    SolverError,
    SolverSettings,
    UnimodularPyramid,
)

F64 = torch.float64
TINY = {"steps": 1, "hidden": 4}
C_UNIMODULAR = 2.0 ** (2.0 / 3.0)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def corners(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-left, top-right, bottom-left, bottom-right pixels of every 2x2 block."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def by_hand(x: Tensor, a: float, d: float) -> tuple[Tensor, Tensor]:
    """(coarse, details in the documented 3c + k layout) from the formulas of eq. 6 / 7."""
    x1, x2, x3, x4 = corners(x)
    ys = [(x1 + x2 - x3 - x4) * d, (x1 - x2 + x3 - x4) * d, (x1 - x2 - x3 + x4) * d]
    b, c, h, w = x1.shape
    return (x1 + x2 + x3 + x4) * a, torch.stack(ys, 2).reshape(b, 3 * c, h, w)


def tiny(name: str = "mrcnf-cifar10", **options: Any) -> MultiResolutionFlow:
    torch.manual_seed(0)
    return msflow.create_model(name, **{**TINY, **options})


def perturb(model: nn.Module, std: float, seed: int = 0) -> nn.Module:
    gen = seeded(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype) * std)
    return model


# ---------------------------------------------------------------- pyramid maps


def matrix_of(pyramid: InvertibleModule) -> Tensor:
    """Rows (coarse, y1, y2, y3) x columns (x1, x2, x3, x4) of the map on one 2x2 block."""
    basis = torch.eye(4, dtype=F64).view(4, 1, 2, 2)
    out, _ = pyramid(basis)
    return out.view(4, 4).T


@pytest.mark.parametrize(
    ("name", "det", "coarse_row", "detail"),
    [("unimodular", 1.0, 0.25, 1 / C_UNIMODULAR), ("haar", 0.5, 0.25, 0.5), ("orthogonal", 1.0, 0.5, 0.5)],
)
def test_pyramid_matrices(name: str, det: float, coarse_row: float, detail: float) -> None:
    m = matrix_of(PYRAMIDS[name]())
    signs = torch.tensor([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=F64)
    expected = signs * torch.tensor([coarse_row, detail, detail, detail], dtype=F64)[:, None]
    torch.testing.assert_close(m, expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(torch.linalg.det(m).abs(), torch.tensor(det, dtype=F64), atol=1e-14, rtol=0)
    if name == "orthogonal":
        torch.testing.assert_close(m @ m.T, torch.eye(4, dtype=F64), atol=1e-15, rtol=0)


def test_unimodular_map_is_volume_preserving_and_averages_exactly(jacobian_logabsdet: Callable) -> None:
    x = torch.rand(3, 2, 6, 4, dtype=F64)
    pyramid = UnimodularPyramid()
    out, logdet = pyramid(x)
    assert torch.equal(logdet, torch.zeros(3, dtype=F64))
    coarse, detail = by_hand(x, 0.25, 1 / C_UNIMODULAR)
    assert torch.equal(out[:, :2], coarse), "the coarse image must be exactly the 2x2 average"
    torch.testing.assert_close(out[:, :2], F.avg_pool2d(x, 2), atol=1e-15, rtol=0)
    torch.testing.assert_close(out[:, 2:], detail, atol=1e-15, rtol=0)
    sign, logabsdet = jacobian_logabsdet(lambda p: pyramid(p[None])[0][0], x[0])
    assert sign != 0 and abs(logabsdet.item()) < 1e-12
    for dtype, tol in ((torch.float32, 1e-6), (F64, 1e-14)):
        xd = x.to(dtype)
        back, _ = pyramid.inverse(pyramid(xd)[0])
        assert (back - xd).abs().max() < tol


def test_haar_logdet_is_eq10(jacobian_logabsdet: Callable) -> None:
    """log|det M^{-1}| = dim(x_{s+1}) log(1/2), in the analysis direction x_s -> (y_s, x_{s+1})."""
    x = torch.rand(2, 3, 4, 6, dtype=F64)
    out, logdet = HaarPyramid()(x)
    dims_coarse = 3 * 2 * 3
    torch.testing.assert_close(logdet, torch.full((2,), dims_coarse * math.log(0.5), dtype=F64))
    _, logabsdet = jacobian_logabsdet(lambda p: HaarPyramid()(p[None])[0][0], x[0])
    torch.testing.assert_close(logabsdet, logdet[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[:, :3], F.avg_pool2d(x, 2), atol=1e-15, rtol=0)


def test_pyramid_shape_errors() -> None:
    with pytest.raises(ShapeError, match="pad to 8x8"):
        UnimodularPyramid().output_shape((1, 7, 7))


# ---------------------------------------------------------------- eq. 11 in closed form


class GaussianStub(InvertibleModule):
    """``z = (y - beta * cond) / sigma``: ``p(y | cond) = N(beta * cond, sigma^2)`` entrywise."""

    def __init__(self, beta: float, sigma: float) -> None:
        super().__init__()
        self.beta = beta
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma), dtype=F64))

    def _mean(self, y: Tensor, cond: Tensor | None) -> Tensor | float:
        return 0.0 if cond is None else self.beta * cond.repeat_interleave(y.shape[1] // cond.shape[1], dim=1)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        ld = -self.log_sigma * x[0].numel()
        return (x - self._mean(x, cond)) / self.log_sigma.exp(), ld.expand(x.shape[0])

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        ld = self.log_sigma * z[0].numel()
        return z * self.log_sigma.exp() + self._mean(z, cond), ld.expand(z.shape[0])


def gaussian_log_prob(x: Tensor, mean: Tensor | float, std: float) -> Tensor:
    normal = torch.distributions.Normal(torch.as_tensor(mean, dtype=F64), torch.tensor(std, dtype=F64))
    return normal.log_prob(x).flatten(1).sum(1)


@pytest.mark.parametrize("pyramid", ["unimodular", "haar", "orthogonal"])
def test_log_likelihood_is_eq11_with_gaussian_levels(pyramid: str) -> None:
    """log p(v) = sum_s (log|det M^-1| + log N(y_s; beta c_s, sigma_s^2)) + log p(x_S), by hand."""
    sigmas, betas = [0.3, 0.7, 1.9], [0.5, -1.2, 0.0]
    levels = [GaussianStub(b, s) for b, s in zip(betas, sigmas, strict=True)]
    model = MultiResolutionFlow((2, 8, 8), levels, pyramid=pyramid)
    v = torch.rand(4, 2, 8, 8, dtype=F64)
    a, d = {"unimodular": (0.25, 1 / C_UNIMODULAR), "haar": (0.25, 0.5), "orthogonal": (0.5, 0.5)}[pyramid]
    block_logdet = math.log(16 * a * d**3)
    expected, x, scale = torch.zeros(4, dtype=F64), v, 1.0
    for s in range(2):
        coarse, detail = by_hand(x, a, d)
        scale *= 4 * a  # the coarse image is scale x the average image
        cond = coarse / scale - 0.5
        expected += coarse[0].numel() * block_logdet + gaussian_log_prob(
            detail, betas[s] * cond.repeat_interleave(3, 1), sigmas[s]
        )
        x = coarse
    top = x / scale  # rescaled to an average image; log-det -dims log(scale)
    expected += gaussian_log_prob(top, 0.0, sigmas[2]) - top[0].numel() * math.log(scale)
    torch.testing.assert_close(model.log_prob_continuous(v), expected, atol=1e-10, rtol=0)
    zs, logdet = model.encode(v)
    torch.testing.assert_close(logdet + sum(standard_normal_log_prob(z) for z in zs), expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(model.decode(zs), v, atol=1e-12, rtol=0)


@pytest.mark.parametrize("pyramid", ["unimodular", "haar", "orthogonal"])
def test_identity_levels_with_multires_noise_are_white_noise(pyramid: str) -> None:
    """Zero-initialised CNFs are identities; with multi-resolution noise the per-level priors
    are exactly the pyramid of one N(0, I) image, so log p(v) = log N(v; 0, I)."""
    density = cnf_density(steps=1, hidden=4, solver={"eval": {"method": "rk4", "step_size": 0.5}})
    model = build_multires((1, 8, 8), 3, density, pyramid=pyramid, multires_noise=True).double().eval()
    v = torch.randn(3, 1, 8, 8, dtype=F64) * 2
    torch.testing.assert_close(model.log_prob_continuous(v), standard_normal_log_prob(v), atol=1e-10, rtol=0)
    # Sampling decomposes one white noise image: decoded latents have identity covariance.
    samples = model.decode(model.sample_latents(4000, generator=seeded(0))).flatten(1)
    cov = samples.T.cov()
    torch.testing.assert_close(cov, torch.eye(64, dtype=F64), atol=0.12, rtol=0)
    plain = build_multires((1, 8, 8), 3, density, pyramid=pyramid).double().eval()
    assert abs(plain.log_prob_continuous(v) - standard_normal_log_prob(v)).max() > 1.0


# ---------------------------------------------------------------- the whole model is exact


def exact_tiny(pyramid: str, preprocess: InvertibleModule | None, multires_noise: bool) -> MultiResolutionFlow:
    solver = ODESolverConfig.both(SolverSettings("rk4", step_size=1 / 16))
    density = cnf_density(steps=1, hidden=4, end_time=0.5, divergence="exact", adjoint=False, solver=solver)
    torch.manual_seed(1)
    model = build_multires((1, 4, 4), 2, density, pyramid, preprocess, multires_noise=multires_noise)
    return perturb(model.double(), std=0.2, seed=2).eval()


@pytest.mark.parametrize(
    ("pyramid", "logit", "multires_noise"),
    [("unimodular", True, False), ("haar", False, True), ("orthogonal", True, True)],
)
def test_model_logdet_is_slogdet_of_jacobian(
    pyramid: str, logit: bool, multires_noise: bool, jacobian_logabsdet: Callable
) -> None:
    """encode's log-det (pyramid, conditional CNFs, top rescaling and logit, prior scales) is
    the slogdet of the autograd Jacobian from v to the concatenated latents."""
    model = exact_tiny(pyramid, Logit(0.05) if logit else None, multires_noise)
    v = 0.05 + 0.9 * torch.rand(2, 1, 4, 4, dtype=F64, generator=seeded(3))
    with torch.no_grad():
        zs, logdet = model.encode(v)
        log_p = model.log_prob_continuous(v)
    assert logdet.abs().min() > 1e-3

    def flat(vi: Tensor) -> Tensor:
        return torch.cat([z.reshape(-1) for z in model.encode(vi[None])[0]])

    for i in range(2):
        sign, logabsdet = jacobian_logabsdet(flat, v[i])
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-9, rtol=0)
        eps = torch.cat([z[i].reshape(-1) for z in zs])
        exact = -0.5 * (eps @ eps) - 0.5 * eps.numel() * math.log(2 * math.pi) + logabsdet
        torch.testing.assert_close(log_p[i], exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(model.decode(zs), v, atol=1e-9, rtol=0)


# ---------------------------------------------------------------- levels and bits/dim


def test_bits_per_dim_and_level_terms() -> None:
    model = perturb(tiny(), 0.05).eval()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=seeded(0))
    with torch.no_grad():
        bpd = model.bits_per_dim(x, generator=seeded(1))
        v, log_q = model.dequantizer(x, generator=seeded(1))
        log_p = model.log_prob_continuous(v)
        terms = model.level_log_probs(x, generator=seeded(1))
        level_bpd = model.level_bits_per_dim(x, generator=seeded(1))
        only_top = model.level_log_probs(x, generator=seeded(1), levels=[2])
    torch.testing.assert_close(bpd, bits_per_dim(log_p, 3 * 32 * 32, 8, log_q))
    torch.testing.assert_close(sum(terms), log_p)
    assert model.level_dims() == [3 * 3 * 16 * 16, 3 * 3 * 8 * 8, 3 * 8 * 8] and sum(model.level_dims()) == 3072
    weighted = sum(b * n / 3072 for b, n in zip(level_bpd, model.level_dims(), strict=True))
    torch.testing.assert_close(weighted, bpd, atol=1e-5, rtol=0)
    torch.testing.assert_close(only_top[0], terms[2])
    with pytest.raises(ValueError, match="levels 0..2"):
        model.level_log_probs(x, levels=[3])


def test_levels_are_independent_terms() -> None:
    """Level s's term has gradients for level s's parameters only; running one level leaves the
    others' solvers idle and their RNODE terms out of the regularization loss."""
    model = perturb(tiny(solver={"train": {"method": "rk4", "step_size": 0.5}}), 0.05).train()
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=seeded(0))
    for s in range(3):
        model.zero_grad()
        (term,) = model.level_log_probs(x, levels=[s])
        term.sum().backward()
        for other, level in enumerate(model.levels):
            grads = [p.grad for p in level.parameters()]
            if other == s:
                assert all(g is not None and g.abs().max() > 0 for g in grads)
            else:
                assert all(g is None or g.abs().max() == 0 for g in grads)
    before = [b.total_nfe for b in model.levels[1]]
    model.level_log_probs(x, levels=[0])
    assert [b.total_nfe for b in model.levels[1]] == before
    assert all(b.last_regularizers == {} for b in model.levels[1])
    loss = model.regularization_loss()
    expected = sum(b.regularization_loss() for b in model.levels[0])
    assert loss.item() > 0
    torch.testing.assert_close(loss, expected)
    nfe = model.nfe()
    assert nfe["last"] > 0 and nfe["total"] >= nfe["last"]


def test_solver_failure_names_the_level() -> None:
    model = perturb(tiny(), 0.05).eval()
    perturb(model.levels[1], 0.3, seed=1)
    assert model.levels[1][0].name.startswith("MultiResolutionFlow level 1 (details 8x8)")
    for block in model.levels[1]:
        block.solver = ODESolverConfig.both(SolverSettings("dopri5", rtol=1e-8, atol=1e-8, max_num_steps=2))
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(SolverError, match="level 1 .*max_num_steps.*rk4"):
        model.bits_per_dim(x)


def test_model_is_unconditional() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="cond=None"):
        model.bits_per_dim(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), cond=torch.zeros(1))


# ---------------------------------------------------------------- super-resolution


@pytest.mark.parametrize("pyramid", ["unimodular", "orthogonal"])
@pytest.mark.parametrize("density", ["cnf", "coupling"])
def test_superres_blocks_average_to_the_input(pyramid: str, density: str) -> None:
    model = perturb(tiny(pyramid=pyramid, density=density), 0.05).eval()
    coarse8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=seeded(0))
    fine = model.superres(coarse8, levels=2, n=3, generator=seeded(1), quantize=False)
    assert fine.shape == (6, 3, 32, 32)
    centres = ((coarse8.double() + 0.5) / 256).repeat_interleave(3, 0)
    torch.testing.assert_close(F.avg_pool2d(fine.double(), 4), centres, atol=2e-6, rtol=0)
    assert (fine[0] - fine[1]).abs().max() > 1e-3, "samples of one input must differ"
    assert (F.avg_pool2d(fine.double(), 2) - F.interpolate(centres, scale_factor=2)).abs().max() > 1e-3
    coarse16 = torch.rand(2, 3, 16, 16, generator=seeded(2))
    one = model.superres(coarse16, levels=1, temperature=0.7, generator=seeded(3), quantize=False)
    torch.testing.assert_close(F.avg_pool2d(one, 2), coarse16, atol=1e-6, rtol=0)
    images = model.superres(coarse8, levels=1)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 16, 16)


def test_superres_rejects_bad_inputs() -> None:
    model = tiny()
    with pytest.raises(ShapeError, match=r"\(B, 3, h, w\)"):
        model.superres(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1..1"):
        model.superres(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), levels=2)
    with pytest.raises(ValueError, match="1..2 level"):
        model.superres(torch.zeros(1, 3, 5, 5, dtype=torch.uint8), levels=3)


def test_superres_of_any_size_uses_the_finest_levels() -> None:
    model = perturb(tiny(), 0.05).eval()
    photo = torch.randint(0, 256, (1, 3, 5, 7), dtype=torch.uint8, generator=seeded(0))
    fine = model.superres(photo, levels=2, n=2, generator=seeded(1), quantize=False)
    assert fine.shape == (2, 3, 20, 28)
    centres = ((photo.double() + 0.5) / 256).repeat_interleave(2, 0)
    torch.testing.assert_close(F.avg_pool2d(fine.double(), 4), centres, atol=2e-6, rtol=0)
    # x2 of an odd size is level 0's work: the same as refining a 16x16 input with level 0 only
    # when the input happens to be the model's 16x16 resolution.
    one = model.superres(photo, levels=1, n=1, generator=seeded(1), quantize=False)
    assert one.shape == (1, 3, 10, 14)


def test_sample_resolutions_are_the_pyramid_of_the_sample() -> None:
    model = perturb(tiny(), 0.05).eval()
    images = model.sample_resolutions(3, temperature=0.8, generator=seeded(4))
    assert [tuple(x.shape[-2:]) for x in images] == [(8, 8), (16, 16), (32, 32)]
    assert all(x.dtype == torch.uint8 for x in images)
    assert torch.equal(images[-1], model.sample(3, temperature=0.8, generator=seeded(4)))
    # Before quantization each coarser image is exactly the 2x2 average of the next finer one.
    with torch.no_grad():
        continuous = model._decode_pyramid(model.sample_latents(3, 0.8, seeded(4)))
    for small, big in zip(continuous, continuous[1:], strict=False):
        torch.testing.assert_close(F.avg_pool2d(big.double(), 2), small.double(), atol=2e-6, rtol=0)
    assert all(torch.equal(model.dequantizer.quantize(v), x) for v, x in zip(continuous, images, strict=True))


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("resolutions", [1, 2, 3, 4])
@pytest.mark.parametrize("density", ["cnf", "coupling"])
def test_presets_build_for_every_resolution_and_density(resolutions: int, density: str) -> None:
    model = perturb(tiny(resolutions=resolutions, density=density), 0.02).eval()
    assert model.num_resolutions == resolutions
    assert model.spec == {
        "name": "mrcnf-cifar10",
        "overrides": {**TINY, "resolutions": resolutions, "density": density},
    }
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=seeded(0))
    with torch.no_grad():
        bpd = model.bits_per_dim(x, generator=seeded(1))
        v, _ = model.dequantizer(x, generator=seeded(1))
        zs, _ = model.encode(v)
        assert (model.decode(zs) - v).abs().max() < 1e-4
    assert bool(torch.isfinite(bpd).all())
    assert model.sample(2, temperature=0.8, generator=seeded(2)).shape == (2, 3, 32, 32)
    side = 32 >> (resolutions - 1)
    assert model.latent_shapes()[-1] == (3, side, side)


def test_mnist_pyramid_sizes() -> None:
    assert tiny("mrcnf-mnist").latent_shapes() == [(3, 14, 14), (3, 7, 7), (1, 7, 7)]
    with pytest.raises(ShapeError, match="pad to 32x32"):
        tiny("mrcnf-mnist", resolutions=4)
    grey = tiny("mrcnf-mnist5k", resolutions=2, density="coupling")  # a 1-channel top is squeezed
    assert grey.bits_per_dim(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).shape == (1,)
    with pytest.raises(ShapeError, match="density='cnf'"):
        tiny("mrcnf-mnist", density="coupling")


@pytest.mark.parametrize(
    ("name", "resolutions", "millions"),
    [
        ("mrcnf-cifar10", 1, 0.32),
        ("mrcnf-cifar10", 2, 1.33),
        ("mrcnf-cifar10", 3, 1.53),
        ("mrcnf-imagenet64", 3, 2.04),
        ("mrcnf-imagenet128", 4, 2.74),
    ],
)
def test_parameter_counts_match_table4(name: str, resolutions: int, millions: float) -> None:
    model = msflow.create_model(name, resolutions=resolutions)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) < 0.01, count
