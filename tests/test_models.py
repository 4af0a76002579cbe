"""End-to-end checks of every registered model, built tiny, plus exactness and learning checks.

Every unconditional preset in ``msflow.list_models()`` is built with one step per level and 8 hidden channels
at its own image shape (a smaller one for the 1024x1024 preset), its ActNorms initialised by one
forward pass, and every parameter perturbed (coupling nets and split priors start as identities).
Then: bits/dim, latents, round trips, sampling, the log_prob / bits/dim conventions and shape errors. A tiny float64
Glow checks that the whole model's log-det is the slogdet of the autograd Jacobian from ``v``
to the concatenated latents, so its log-density is exact; a short Adam run checks it learns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import msflow
from msflow.distributions import standard_normal_log_prob
from msflow.errors import ConfigError, MsflowError, ShapeError
from msflow.metrics import bits_per_dim
from msflow.models.glow import glow, realnvp
from msflow.models.multiscale import MultiScaleFlow

# Conditional presets (cflow-*, factorized-*, caflow-*) model p(target | condition): tests/test_cflow.py,
# tests/test_caflow.py. Presets are selected by what the registry records they can do, not by name.
MODELS = msflow.list_models(conditional=False)
TINY = {"steps": 1, "hidden": 8}
# Presets too large to run in the default suite at their own size keep their architecture at a
# smaller image (the same number of levels still fits).
SMALLER = {"balanced-celeba1024": {"image_shape": (3, 256, 256)}}
BATCH = 3


def toy_images(shape: tuple[int, ...], n: int, seed: int, levels: int = 256) -> Tensor:
    """Random uint8 images ``(n, *shape)`` with values in ``[0, levels)`` (``2^n_bits`` levels)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, *shape), generator=gen, dtype=torch.uint8)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", params=MODELS)
def model(request: pytest.FixtureRequest, randomize: Callable) -> MultiScaleFlow:
    """A tiny, initialised, perturbed float32 model of each preset (built once per module)."""
    torch.manual_seed(0)
    net = msflow.create_model(request.param, **TINY, **SMALLER.get(request.param, {}))
    with torch.no_grad():
        net.bits_per_dim(toy_images(net.image_shape, 8, 100, net.dequantizer.levels), generator=seeded(101))
    randomize(net, std=0.02, seed=1)
    return net.eval()


@pytest.fixture
def images(model: MultiScaleFlow) -> Tensor:
    return toy_images(model.image_shape, BATCH, 0, model.dequantizer.levels)


# ---------------------------------------------------------------- every registered model


def test_registry_lists_models() -> None:
    assert MODELS == sorted(MODELS)
    assert {"glow-mnist", "glow-cifar10", "realnvp-cifar10"} <= set(MODELS)


def test_model_declares_what_the_registry_records(model: MultiScaleFlow, request: pytest.FixtureRequest) -> None:
    from msflow.models import ImageFlow, model_capabilities
    from msflow.transforms.cnf import cnf_blocks

    caps = model_capabilities(model.spec["name"])
    assert isinstance(model, ImageFlow) and not model.conditional and model.task is None
    assert (model.conditional, model.task) == (caps.conditional, caps.task)
    assert bool(cnf_blocks(model)) == caps.cnf


def test_create_model_records_spec() -> None:
    net = msflow.create_model("realnvp-mnist", **TINY)
    assert isinstance(net, MultiScaleFlow)
    assert net.spec == {"name": "realnvp-mnist", "overrides": TINY}


def test_bits_per_dim_shape_and_finite(model: MultiScaleFlow, images: Tensor) -> None:
    with torch.no_grad():
        bpd = model.bits_per_dim(images, generator=seeded(0))
    assert bpd.shape == (BATCH,)
    assert bpd.dtype == torch.float32
    assert bool(torch.isfinite(bpd).all())
    assert model.num_dims == math.prod(model.image_shape)


def test_encode_decode_round_trip(model: MultiScaleFlow, images: Tensor) -> None:
    v, _ = model.dequantizer(images, generator=seeded(0))
    with torch.no_grad():
        zs, logdet = model.encode(v)
        v_back = model.decode(zs)
    assert logdet.shape == (BATCH,)
    assert v_back.shape == v.shape
    assert float((v_back - v).abs().max()) < 1e-4
    # The perturbation must have made the flow non-trivial, or the round trip proves nothing.
    assert float(logdet.abs().min()) > 1e-3


def test_latents_match_latent_shapes_fine_to_coarse(model: MultiScaleFlow, images: Tensor) -> None:
    v, _ = model.dequantizer(images, generator=seeded(0))
    with torch.no_grad():
        zs, _ = model.encode(v)
    shapes = [tuple(s) for s in model.latent_shapes()]
    assert [tuple(z.shape[1:]) for z in zs] == shapes
    assert all(z.shape[0] == BATCH for z in zs)
    assert model.latent_shapes(model.image_shape) == model.latent_shapes()
    sides = [(h, w) for _, h, w in shapes]
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(sides, sides[1:], strict=False)), sides
    if len(shapes) > 1:  # a single-latent flow (TarFlow) keeps the image's shape
        assert sides[0] != sides[-1], "a multi-scale model must end coarser than it starts"
    assert sum(math.prod(s) for s in shapes) == model.num_dims
    with pytest.raises(ShapeError):
        model.latent_shapes((model.image_shape[0] + 1, *model.image_shape[1:]))


def test_log_prob_is_minus_bpd_times_d_ln2(model: MultiScaleFlow, images: Tensor) -> None:
    with torch.no_grad():
        log_p = model.log_prob(images, generator=seeded(5))
        bpd = model.bits_per_dim(images, generator=seeded(5))
    torch.testing.assert_close(log_p, -bpd * model.num_dims * math.log(2.0), rtol=1e-6, atol=1e-3)


def test_bits_per_dim_by_hand(model: MultiScaleFlow, images: Tensor) -> None:
    """bpd = (-log p(v) + log q + D b ln 2) / (D ln 2), with log p(v) = sum log N(eps) + logdet."""
    with torch.no_grad():
        bpd = model.bits_per_dim(images, generator=seeded(7))
        v, log_q = model.dequantizer(images, generator=seeded(7))
        log_p_v = model.log_prob_continuous(v)
        zs, logdet = model.encode(v)
    d = model.num_dims
    torch.testing.assert_close(log_p_v, logdet + sum(standard_normal_log_prob(z) for z in zs))
    n_bits = model.dequantizer.n_bits
    torch.testing.assert_close(bpd, bits_per_dim(log_p_v, d, n_bits, log_q))
    manual = (-log_p_v.double() + log_q.double() + d * n_bits * math.log(2.0)) / (d * math.log(2.0))
    torch.testing.assert_close(bpd.double(), manual, rtol=1e-6, atol=1e-5)


def test_sample_is_uint8_images(model: MultiScaleFlow) -> None:
    a = model.sample(2, temperature=0.7, generator=seeded(3))
    b = model.sample(2, temperature=0.7, generator=seeded(3))
    assert a.dtype == torch.uint8
    assert a.shape == (2, *model.image_shape)
    assert torch.equal(a, b), "a seeded generator must make sampling reproducible"


def test_temperature_zero_sample_is_decoded_zero_latents(model: MultiScaleFlow) -> None:
    a = model.sample(2, temperature=0.0, generator=seeded(1))
    b = model.sample(2, temperature=0.0, generator=seeded(2))
    assert torch.equal(a, b)
    zeros = [torch.zeros(2, *s) for s in model.latent_shapes()]
    with torch.no_grad():
        expected = model.dequantizer.quantize(model.decode(zeros))
    assert torch.equal(a, expected)


def test_wrong_channel_count_raises_shape_error(model: MultiScaleFlow) -> None:
    c, h, w = model.image_shape
    with pytest.raises(ShapeError):
        model.bits_per_dim(toy_images((c + 1, h, w), 2, 0, model.dequantizer.levels))
    with pytest.raises(ShapeError):
        model.bits_per_dim(toy_images((c, h + 2, w), 2, 0, model.dequantizer.levels))


# ---------------------------------------------------------------- the whole model is exact


MODEL_JACOBIAN_CASES = {
    "glow-center-affine-lu": lambda: glow((1, 8, 8), levels=2, steps=1, hidden=4),
    "glow-logit-additive-plain": lambda: glow(
        (1, 8, 8), levels=2, steps=1, hidden=4, coupling="additive", lu=False, preprocess="logit", alpha=0.05
    ),
    "glow-tanh-2x4x4": lambda: glow((2, 4, 4), levels=2, steps=2, hidden=4, scale="tanh"),
    "glow-channelwise-prior": lambda: glow((1, 8, 8), levels=2, steps=1, hidden=4, split_prior="channelwise"),
    "realnvp-logit": lambda: realnvp((1, 8, 8), levels=2, steps=2, hidden=4),
}


@pytest.mark.parametrize("make", MODEL_JACOBIAN_CASES.values(), ids=MODEL_JACOBIAN_CASES.keys())
def test_model_logdet_is_slogdet_of_jacobian(
    make: Callable[[], MultiScaleFlow], randomize: Callable, jacobian_logabsdet: Callable
) -> None:
    """log|det d(eps_1..eps_L)/dv| reported by encode == slogdet of the autograd Jacobian."""
    torch.manual_seed(0)
    net = make().double()
    gen = seeded(0)
    with torch.no_grad():  # ActNorm data-dependent init in every level
        net.encode(0.05 + 0.9 * torch.rand(8, *net.image_shape, generator=gen, dtype=torch.float64))
    randomize(net, std=0.1, seed=3)
    v = 0.05 + 0.9 * torch.rand(2, *net.image_shape, generator=gen, dtype=torch.float64)

    def flat_latents(vi: Tensor) -> Tensor:
        zs, _ = net.encode(vi[None])
        return torch.cat([z.reshape(-1) for z in zs])

    with torch.no_grad():
        zs, logdet = net.encode(v)
        log_p = net.log_prob_continuous(v)
    for i in range(v.shape[0]):
        sign, logabsdet = jacobian_logabsdet(flat_latents, v[i])
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-8, rtol=0)
        eps = torch.cat([z[i].reshape(-1) for z in zs])
        exact = -0.5 * (eps * eps).sum() - 0.5 * eps.numel() * math.log(2 * math.pi) + logabsdet
        torch.testing.assert_close(log_p[i], exact, atol=1e-8, rtol=0)


def test_channelwise_split_prior_ignores_the_kept_half() -> None:
    """``split_prior="channelwise"``: a factored-out half's density does not depend on the kept half."""
    torch.manual_seed(0)
    model = glow((1, 8, 8), levels=2, steps=1, hidden=4, split_prior="channelwise")
    prior = model.levels[0][-1]
    assert prior.net is None and prior.keep == 2
    with torch.no_grad():
        prior.loc.normal_()
        prior.log_sigma.normal_(std=0.3)
    x = torch.randn(3, 4, 4, 4)
    changed = x.clone()
    changed[:, :2] += 5.0  # the kept half
    z, ld = prior(x)
    z2, ld2 = prior(changed)
    torch.testing.assert_close(z[:, 2:], z2[:, 2:])
    torch.testing.assert_close(ld, ld2)
    conditional = glow((1, 8, 8), levels=2, steps=1, hidden=4)
    assert sum(p.numel() for p in conditional.parameters()) > sum(p.numel() for p in model.parameters())


def test_unknown_split_prior_names_the_choices() -> None:
    with pytest.raises(ValueError, match="channelwise"):
        glow((1, 8, 8), levels=2, steps=1, hidden=4, split_prior="learned")


# ---------------------------------------------------------------- errors and the registry


def test_unsqueezable_size_says_how_to_fix() -> None:
    with pytest.raises(ShapeError, match="pad to 32"):
        msflow.create_model("glow-mnist", levels=3)
    with pytest.raises(ShapeError, match="pad to 32"):
        msflow.create_model("realnvp-mnist", levels=3, **TINY)


def test_unknown_model_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="glow-mnist"):
        msflow.create_model("glow-does-not-exist")


def test_unknown_override_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="glow-mnist"):
        msflow.create_model("glow-mnist", not_an_option=1)
    with pytest.raises(ConfigError):
        msflow.create_model("realnvp-mnist", coupling="additive")  # RealNVP has no such option


@pytest.mark.parametrize(
    "override",
    [{"coupling": "bogus"}, {"scale": "bogus"}, {"preprocess": "bogus"}, {"levels": 0}],
    ids=["coupling", "scale", "preprocess", "zero-levels"],
)
def test_bad_override_value_raises_config_error(override: dict) -> None:
    """errors.ConfigError covers 'an invalid value' too; the CLI only prints MsflowErrors nicely."""
    with pytest.raises(ConfigError):
        msflow.create_model("glow-mnist", **TINY, **override)


def test_errors_are_value_errors() -> None:
    assert issubclass(ShapeError, MsflowError) and issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------- it learns


def structured_batch(n: int = 16) -> Tensor:
    """Four 8x8 patterns (halves, stripes, diagonal) with +-6 levels of integer noise, uint8."""
    gen = seeded(0)
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    patterns = torch.stack([xx < 4, yy < 4, (xx + yy) % 2 == 0, xx == yy]).float()
    base = patterns[torch.arange(n) % 4] * 200 + 20
    noise = torch.randint(-6, 7, (n, 8, 8), generator=gen)
    return (base + noise).clamp(0, 255).to(torch.uint8)[:, None]


def test_adam_reduces_bits_per_dim() -> None:
    torch.manual_seed(0)
    x = structured_batch()
    net = glow((1, 8, 8), levels=2, steps=1, hidden=16)

    def evaluate() -> float:
        with torch.no_grad():
            return float(net.bits_per_dim(x, generator=seeded(1)).mean())

    before = evaluate()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        loss = net.bits_per_dim(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert math.isfinite(after)
    assert after < before - 2.5, f"bits/dim only went from {before:.3f} to {after:.3f}"


def test_encode_decode_with_features_run_at_any_squeezable_size_and_check_shapes() -> None:
    model = glow((1, 8, 8), levels=2, steps=1, hidden=8).eval()
    v = torch.rand(2, 1, 16, 12)  # convolutional: another size whose sides the levels can squeeze
    with torch.no_grad():
        zs, _ = model.encode_with_features(v, [None, None])
        assert torch.allclose(model.decode_with_features(zs, [None, None]), v, atol=1e-5)
    with pytest.raises(ShapeError, match="level 1"):
        model.encode_with_features(torch.rand(2, 1, 6, 6), [None, None])
    with pytest.raises(ShapeError, match="latents of a 16x12 image have shapes"):
        model.decode_with_features([zs[0][:, :1], zs[1]], [None, None])
    with pytest.raises(ValueError, match="one condition feature"):
        model.encode_with_features(v, [None])
