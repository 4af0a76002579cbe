"""MixLogCDF coupling (Flow++): closed forms, tails, bisection tolerance, implicit gradients.

The generic contract (round trip, log-det vs autograd slogdet in both directions, conditions,
state_dict) is checked by tests/test_conformance.py; these tests cover what is specific to the
mixture-of-logistics map.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from msflow.nn import conv_subnet
from msflow.transforms import MixLogCDFCoupling
from msflow.transforms.mixlogcdf import MIN_LOG_SCALE, mixlog_logit_cdf, mixlog_logit_cdf_inverse

F64 = torch.float64


def mixture(k: int, shape: tuple[int, ...] = (2, 3, 4, 5), seed: int = 0, spread: float = 3.0) -> list[Tensor]:
    """Random ``(logit_pi, mu, log_s)`` of ``k`` well-separated components, ``(B, C, K, H, W)`` each."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    logit_pi = torch.randn(b, c, k, h, w, generator=gen, dtype=F64)
    mu = spread * torch.randn(b, c, k, h, w, generator=gen, dtype=F64)
    log_s = 0.7 * torch.randn(b, c, k, h, w, generator=gen, dtype=F64)
    return [logit_pi, mu, log_s]


def test_one_component_is_a_standardised_logistic() -> None:
    """K = 1: sigmoid^-1(sigmoid((x - mu) / s)) = (x - mu) / s, log-derivative -log s, even 60 s into the tails."""
    logit_pi, mu, log_s = mixture(1)
    x = torch.linspace(-60, 60, 2 * 3 * 4 * 5, dtype=F64).view(2, 3, 4, 5) * log_s.exp()[:, :, 0] + mu[:, :, 0]
    y, log_dy = mixlog_logit_cdf(x, logit_pi, mu, log_s)
    torch.testing.assert_close(y, (x - mu[:, :, 0]) / log_s.exp()[:, :, 0], atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(log_dy, -log_s[:, :, 0], atol=1e-9, rtol=0)


def test_log_derivative_matches_autograd_everywhere() -> None:
    """The elementwise log-det term equals log dy/dx from autograd, from the far left tail to the far right."""
    params = mixture(5)
    x = torch.linspace(-40, 40, 2 * 3 * 4 * 5, dtype=F64).view(2, 3, 4, 5).requires_grad_(True)
    y, log_dy = mixlog_logit_cdf(x, *params)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_dy, grad.log(), atol=1e-9, rtol=0)
    assert bool((grad > 0).all()), "the map must be strictly increasing"


def test_float32_tails_stay_finite_and_accurate() -> None:
    """Where F rounds to 0 or 1 in float32, log F - log(1 - F) still gives the float64 answer."""
    params64 = mixture(4, seed=1)
    x64 = torch.linspace(-300, 300, 2 * 3 * 4 * 5, dtype=F64).view(2, 3, 4, 5)
    y64, ld64 = mixlog_logit_cdf(x64, *params64)
    y32, ld32 = mixlog_logit_cdf(x64.float(), *[p.float() for p in params64])
    assert bool(torch.isfinite(y32).all() and torch.isfinite(ld32).all())
    torch.testing.assert_close(y32.double(), y64, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ld32.double(), ld64, atol=1e-4, rtol=1e-5)
    x_back = mixlog_logit_cdf_inverse(y32, *[p.float() for p in params64])
    torch.testing.assert_close(x_back.double(), x64, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("tol", [1e-2, 1e-6, None], ids=["1e-2", "1e-6", "default"])
def test_inverse_meets_its_tolerance(tol: float | None) -> None:
    params = mixture(6, seed=2, spread=8.0)
    x = 10 * torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    y, _ = mixlog_logit_cdf(x, *params)
    error = (mixlog_logit_cdf_inverse(y, *params, tol=tol) - x).abs().max().item()
    assert error <= (tol or 1e-12) * 10 or error <= 1e-12, error


def test_inverse_bracket_contains_the_root_far_in_the_tails() -> None:
    """Targets far outside every component (|y| = 500) are still inverted: the bracket comes from the quantiles."""
    params = mixture(3, seed=4)
    y = torch.tensor([-500.0, -50.0, 0.0, 50.0, 500.0], dtype=F64).repeat(24)[: 2 * 3 * 4 * 5].view(2, 3, 4, 5)
    x = mixlog_logit_cdf_inverse(y, *params)
    y_again, _ = mixlog_logit_cdf(x, *params)
    torch.testing.assert_close(y_again, y, atol=1e-8, rtol=1e-10)


def test_inverse_on_a_plateau_returns_a_point_of_the_plateau() -> None:
    """Two very narrow components 20 apart: g is flat to machine precision between them, y = g(x) pins
    x down only to the plateau, and the inverse must return a finite point of it (no huge Newton jump)."""
    shape = (1, 1, 2, 1, 3)
    logit_pi = torch.zeros(shape, dtype=F64)
    mu = torch.tensor([-10.0, 10.0], dtype=F64).view(1, 1, 2, 1, 1).expand(shape)
    log_s = torch.full(shape, MIN_LOG_SCALE, dtype=F64)
    x = torch.tensor([-5.0, 0.5, 7.0], dtype=F64).view(1, 1, 1, 3)
    y, log_dy = mixlog_logit_cdf(x, logit_pi, mu, log_s)
    assert float(log_dy.max()) < -1e3, "the test needs a numerically flat region"
    x_back = mixlog_logit_cdf_inverse(y, logit_pi, mu, log_s)
    assert bool(((x_back > -10) & (x_back < 10)).all())
    torch.testing.assert_close(mixlog_logit_cdf(x_back, logit_pi, mu, log_s)[0], y, atol=1e-12, rtol=0)


def test_inverse_has_implicit_function_gradients() -> None:
    """gradcheck through bisection + Newton step: d x / d(y, pi, mu, s) match finite differences."""
    params = [p[:1, :1, :, :2, :2].clone().requires_grad_(True) for p in mixture(3, seed=5)]
    y = torch.randn(1, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    assert torch.autograd.gradcheck(mixlog_logit_cdf_inverse, (y, *params), eps=1e-6, atol=1e-6)


def make_layer(mixtures: int = 4, dtype: torch.dtype = F64, std: float = 0.3, seed: int = 0) -> MixLogCDFCoupling:
    torch.manual_seed(seed)
    layer = MixLogCDFCoupling(6, subnet=conv_subnet(hidden=8), mixtures=mixtures).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=F64).to(dtype) * std)
    return layer


def test_zero_initialised_layer_is_the_identity() -> None:
    layer = MixLogCDFCoupling(4, subnet=conv_subnet(hidden=8), mixtures=5).double()
    x = 4 * torch.randn(2, 4, 3, 3, dtype=F64)
    z, logdet = layer(x)
    torch.testing.assert_close(z, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)


def test_layer_logdet_equals_sum_of_closed_form_terms(jacobian_logabsdet: Callable) -> None:
    """Perturbed (multimodal) layer: the exact log-det against the autograd Jacobian, both directions."""
    layer = make_layer(std=0.2)
    x = 3 * torch.randn(2, 6, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        z, ld_forward = layer(x)
        x_back, ld_inverse = layer.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    for i in range(2):
        _, forward_ref = jacobian_logabsdet(lambda p: layer(p[None])[0][0], x[i])
        _, inverse_ref = jacobian_logabsdet(lambda p: layer.inverse(p[None])[0][0], z[i])
        torch.testing.assert_close(ld_forward[i], forward_ref, atol=1e-8, rtol=0)
        torch.testing.assert_close(ld_inverse[i], inverse_ref, atol=1e-8, rtol=0)
    assert float(ld_forward.abs().min()) > 1e-2, "the perturbed layer should not be volume-preserving"


def test_float32_layer_round_trip() -> None:
    layer = make_layer(dtype=torch.float32, std=0.2)
    x = 3 * torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        z, ld = layer(x)
        x_back, ld_back = layer.inverse(z)
    # Where the map is flat, float32 rounding of z (~1e-5 here) moves x by up to ~1e-3: conditioning,
    # not the solver (the exact float64 inverse of the same rounded z is as far off). float64 is exact.
    assert float((x_back - x).abs().max()) < 1e-3
    assert float((ld + ld_back).abs().max()) < 1e-3
    assert float((x_back - x).abs().median()) < 1e-5


def test_log_scales_are_clamped() -> None:
    """A subnet asking for tiny scales gets e^MIN_LOG_SCALE: the slope stays bounded."""
    layer = MixLogCDFCoupling(2, subnet=conv_subnet(hidden=4), mixtures=1).double()
    with torch.no_grad():
        last = layer.net[-1]
        last.bias[4] = -50.0  # the one log-scale output of the one changed channel
    x = torch.zeros(1, 2, 2, 2, dtype=F64)
    _, logdet = layer(x)
    torch.testing.assert_close(logdet, torch.tensor([-4 * MIN_LOG_SCALE], dtype=F64))


def test_needs_at_least_one_component() -> None:
    with pytest.raises(ValueError, match="mixture"):
        MixLogCDFCoupling(4, mixtures=0)
