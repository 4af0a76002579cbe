"""Liao & He's balanced flow: block properties beyond the conformance suite, the model, checkpointing.

The conformance suite (test_conformance.py) already checks inversion and log-dets of the
strided conv, the dual coupling, the rational-quadratic activation and a whole block; here:
identity at initialisation (eq. 18), the bounds the paper relies on (activation slope in (0, 1],
coupling scale in (0.64, 2.72)), the strided conv's layout, the presets, and that gradient
checkpointing changes memory, not results.
"""

from __future__ import annotations

import math

import pytest
import torch

from msflow import create_model
from msflow.core import FlowSequential, set_gradient_checkpointing
from msflow.errors import ConfigError, ShapeError
from msflow.models.balanced import balanced, balanced_block, kept_channels
from msflow.nn import conv_subnet, resnet_subnet
from msflow.transforms import DualAffineCoupling, RQActivation, Squeeze, StridedInvConv
from msflow.transforms.dual_coupling import LOG_SCALE_RANGE, mexican_hat, mexican_hat_biases
from msflow.transforms.spline import max_bin_ratio

F64 = torch.float64


def _slopes(act: RQActivation, lo: float = -40.0, hi: float = 40.0, n: int = 20001) -> torch.Tensor:
    """Autograd slope of every channel of ``act`` on a dense grid (tails included)."""
    grid = torch.linspace(lo, hi, n, dtype=F64)
    x = grid.reshape(1, 1, n, 1).expand(1, act.num_channels, n, 1).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(act(x)[0].sum(), x)
    return grad


@pytest.mark.parametrize(("beta", "kappa"), [(0.5, 1.0), (0.9, 1.0), (0.7, 1.2), (0.99, 0.8)])
def test_fresh_block_is_identity_with_zero_logdet(beta: float, kappa: float) -> None:
    blocks = balanced_block(3, stride=2, subnet=resnet_subnet(hidden=8), beta=beta, kappa=kappa, bins=5)
    block = FlowSequential(*blocks).double()
    x = torch.randn(4, 3, 6, 8, dtype=F64) * 2
    z, logdet = block(x)
    squeezed, _ = Squeeze()(x)
    # Exact up to the float32 rounding of the initial parameters (about 1e-8 relative).
    torch.testing.assert_close(z, squeezed, atol=1e-6, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(4, dtype=F64), atol=1e-6 * x[0].numel(), rtol=0)
    # Each part is not the identity on its own: the conv and coupling expand by 1/beta in all,
    # the activation contracts by beta (eq. 18).
    d = x[0].numel()
    _, ld_conv = blocks[0].double()(x)
    h, _ = blocks[0](x)
    _, ld_aff = blocks[1](h)
    torch.testing.assert_close(
        ld_conv + ld_aff, torch.full((4,), -d * math.log(beta), dtype=F64), atol=1e-6 * d, rtol=0
    )


def test_activation_starts_linear_with_slope_beta() -> None:
    act = RQActivation(2, bins=7, beta=0.6, width=1.5).double()
    x = torch.linspace(-10, 10, 400, dtype=F64).reshape(1, 2, -1, 1)
    z, logdet = act(x)
    torch.testing.assert_close(z, 0.6 * x, atol=1e-6, rtol=0)
    d = x[0].numel()
    torch.testing.assert_close(logdet, torch.tensor([d * math.log(0.6)], dtype=F64), atol=1e-6 * d, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_activation_slope_stays_in_zero_one(seed: int) -> None:
    """Even with large random parameters (far from initialisation) the slope is in (0, 1]."""
    torch.manual_seed(seed)
    act = RQActivation(8, bins=16, beta=0.9).double()
    with torch.no_grad():
        for p in act.parameters():
            p.add_(torch.randn_like(p) * 3)
    slopes = _slopes(act)
    assert slopes.min() > 0
    assert slopes.max() <= 1 + 1e-12


def test_bin_ratio_cap_is_needed_and_sufficient() -> None:
    """Eq. 17's slope inside a bin never exceeds max(a, b, 2 delta^2 / (min(a, b) + delta)); the
    cap keeps it <= 1, while the paper's uncapped ratio (delta up to 1) reaches almost 2."""

    def bin_slope(a0: torch.Tensor, a1: torch.Tensor, delta: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        u = xi * (1 - xi)
        rho = a0 + a1 - 2 * delta
        return delta**2 * (a1 * xi**2 + 2 * delta * u + a0 * (1 - xi) ** 2) / (delta + rho * u) ** 2

    gen = torch.Generator().manual_seed(0)
    a0, a1, r, xi = torch.rand(4, 200_000, generator=gen, dtype=F64)
    capped = r * max_bin_ratio(torch.minimum(a0, a1))
    assert bin_slope(a0, a1, capped, xi).max() <= 1 + 1e-12
    assert bin_slope(a0, a1, r, xi).max() > 1.5


def test_dual_coupling_scale_is_bounded() -> None:
    layer = DualAffineCoupling(4, subnet=conv_subnet(hidden=8), mixtures=4).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 5)
    x = torch.randn(8, 4, 5, 5, dtype=F64) * 10
    _, log_s = layer._shift_log_scale(layer.net1, layer.bias1, x[:, 2:], None)
    lo, hi = LOG_SCALE_RANGE
    assert log_s.min() >= lo - 1e-12 and log_s.max() <= hi + 1e-12
    assert math.exp(lo) == pytest.approx(0.6400, abs=1e-4) and math.exp(hi) == pytest.approx(math.e)


@pytest.mark.parametrize("mixtures", [1, 3, 5])
@pytest.mark.parametrize("target", [0.0, -math.log(0.5), 0.3, -0.2])
def test_mexican_hat_biases_hit_target(mixtures: int, target: float) -> None:
    biases = mexican_hat_biases(target, mixtures).double()
    assert float(mexican_hat(biases).mean()) == pytest.approx(target, abs=1e-6)
    if mixtures > 1:
        assert len(set(biases.tolist())) == mixtures, "equal biases would keep the hats identical forever"


def test_mexican_hat_biases_refuse_unreachable_scale() -> None:
    with pytest.raises(ValueError, match="beta"):
        mexican_hat_biases(-math.log(0.2), 3)  # s = 5 is beyond the hat's maximum e


def test_strided_conv_identity_is_squeeze_and_kappa_scales() -> None:
    x = torch.randn(2, 3, 4, 6)
    torch.testing.assert_close(StridedInvConv(3, k=2, kappa=1.0)(x)[0], Squeeze()(x)[0])
    z, ld = StridedInvConv(3, k=2, kappa=2.0)(x)
    torch.testing.assert_close(z, 2 * Squeeze()(x)[0])
    torch.testing.assert_close(ld, torch.full((2,), x[0].numel() * math.log(2.0)))
    with pytest.raises(ShapeError, match="pad to 6x6"):
        StridedInvConv(3, k=3).output_shape((3, 4, 6))


def test_presets_build_and_split_ratio() -> None:
    model = create_model("balanced-mnist", steps=1, hidden=8)
    assert [s for s in model.latent_shapes()] == [(2, 14, 14), (8, 7, 7)]
    quarter = balanced((3, 16, 16), levels=2, steps=1, hidden=8, subnet="convnet", split=0.75)
    assert quarter.keep == [3, 0] and quarter.latent_shapes() == [(9, 8, 8), (12, 4, 4)]
    with pytest.raises(ValueError, match="split"):
        kept_channels(4, 1.0)
    with pytest.raises(ConfigError, match="subnet"):
        create_model("balanced-mnist", subnet="mlp")
    with pytest.raises(ShapeError, match="pad to 32x32"):
        create_model("balanced-cifar10", image_shape=(3, 28, 28))


def test_fresh_model_is_identity_up_to_the_priors() -> None:
    """Blocks start as identities, so a fresh model's latents are the squeezed, centred image."""
    model = balanced((1, 8, 8), levels=1, steps=2, hidden=8).double()
    v = torch.rand(3, 1, 8, 8, dtype=F64)
    (z,), logdet = model.encode(v)
    torch.testing.assert_close(z, Squeeze()(v - 0.5)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(3, dtype=F64), atol=1e-6 * 64, rtol=0)


@pytest.mark.parametrize("name", ["balanced-mnist", "glow-mnist"])
def test_gradient_checkpointing_keeps_loss_and_gradients(name: str) -> None:
    """Same loss and gradients with and without recomputation (any multi-scale flow, ActNorm included)."""
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = set_gradient_checkpointing(create_model(name, steps=2, hidden=8), enabled)
        # The first pass runs ActNorm's data-dependent initialisation, which is never recomputed.
        loss = model.bits_per_dim(x, generator=torch.Generator().manual_seed(1)).mean()
        loss = model.bits_per_dim(x, generator=torch.Generator().manual_seed(1)).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    torch.testing.assert_close(loss_a, loss_b, atol=0, rtol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)


def test_celeba1024_preset_has_the_papers_shape() -> None:
    """8 levels, 3/4 of the channels split off at each, 5-bit data (appendix C); built, not run."""
    model = create_model("balanced-celeba1024", steps=1, hidden=8)
    shapes = model.latent_shapes()
    assert len(shapes) == 8 and model.dequantizer.n_bits == 5
    assert shapes[0] == (9, 512, 512) and shapes[1] == (9, 256, 256) and shapes[-1] == (12, 4, 4)
    assert sum(c * h * w for c, h, w in shapes) == 3 * 1024 * 1024
