"""Conditional flows and factorized baselines of Winkler et al. (super-resolution, segmentation).

Every conditional preset is built tiny and checked end to end (bits/dim, sampling, condition
handling, bad conditions); a float64 conditional flow's log-det is the slogdet of the autograd
Jacobian for a fixed condition; binary dequantization's ``log q`` is the change of variables of
its noise map; the factorized likelihoods are normalised distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import msflow
from msflow.errors import DataError, ShapeError
from msflow.models.cflow import ConditionalFlow, cflow_segment, cflow_superres
from msflow.models.factorized import FactorizedSegmenter, discretized_logistic_log_prob
from msflow.transforms.binary_dequant import BinaryDequantize

TINY_SR = {"steps": 1, "hidden": 8, "features": 8, "blocks": 1, "growth": 4}
TINY = {
    "cflow-sr2": TINY_SR,
    "cflow-sr4": TINY_SR,
    "cflow-sr2-paper": TINY_SR,
    "cflow-seg": {"size": 16, "hidden": 8, "vgg": (4, 4, 4), "dequantizer_steps": 1},
    "factorized-sr2": {"features": 8, "blocks": 1, "growth": 4},
    "factorized-sr4": {"features": 8, "blocks": 1, "growth": 4},
    "factorized-seg": {"size": 16, "vgg": (4, 4, 4)},
}
CONDITIONAL = [name for name in msflow.list_models() if name.startswith(("cflow-", "factorized-"))]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(model: torch.nn.Module, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Random targets (0/1 masks for segmentation) and uint8 conditions of a model's shapes."""
    gen = seeded(seed)
    high = 2 if model.task == "segment" else 256
    y = torch.randint(0, high, (n, *model.image_shape), generator=gen, dtype=torch.uint8)
    x = torch.randint(0, 256, (n, *model.cond_shape), generator=gen, dtype=torch.uint8)
    return y, x


@pytest.fixture(scope="module", params=CONDITIONAL)
def model(request: pytest.FixtureRequest, randomize: Callable) -> torch.nn.Module:
    torch.manual_seed(0)
    net = msflow.create_model(request.param, **TINY[request.param])
    with torch.no_grad():  # ActNorm's data-dependent start
        net.bits_per_dim(*pair(net, 4, 100), generator=seeded(101))
    randomize(net, std=0.02, seed=1)
    return net.eval()


def test_every_conditional_preset_is_tested() -> None:
    assert set(CONDITIONAL) == set(TINY)


def test_model_declares_what_the_registry_records(model) -> None:
    from msflow.models import ConditionalImageFlow, model_capabilities

    caps = model_capabilities(model.spec["name"])
    assert isinstance(model, ConditionalImageFlow) and model.conditional and caps.conditional
    assert model.task == caps.task and not caps.cnf
    assert model.n_bits == (1 if model.task == "segment" else 8)


def test_bits_per_dim_is_finite_and_per_image(model) -> None:
    y, x = pair(model, 3, 0)
    with torch.no_grad():
        bpd = model.bits_per_dim(y, x, seeded(0))
    assert bpd.shape == (3,) and torch.isfinite(bpd).all()


def test_condition_changes_the_likelihood(model) -> None:
    y, x = pair(model, 2, 0)
    with torch.no_grad():
        a = model.bits_per_dim(y, x, seeded(0))
        b = model.bits_per_dim(y, 255 - x, seeded(0))
    assert (a - b).abs().min() > 1e-6


def test_one_condition_gives_n_samples_of_the_target_shape(model) -> None:
    _, x = pair(model, 1, 0)
    samples = model.sample(3, temperature=0.7, cond=x, generator=seeded(0))
    assert samples.shape == (3, *model.image_shape) and samples.dtype == torch.uint8
    if model.task == "segment":
        assert set(samples.unique().tolist()) <= {0, 1}


def test_missing_condition_raises_value_error(model) -> None:
    y, _ = pair(model, 1, 0)
    with pytest.raises(ValueError, match="cond"):
        model.bits_per_dim(y)
    with pytest.raises(ValueError, match="cond"):
        model.sample(1, cond=None)


def test_wrong_condition_names_the_expected_shape(model) -> None:
    y, x = pair(model, 1, 0)
    c, h, w = model.cond_shape
    grey = x[:, :1]
    with pytest.raises(ShapeError, match=f"{c} channels"):
        model.bits_per_dim(y, grey)
    with pytest.raises(ShapeError, match=f"{c}x{h}x{w}"):
        model.bits_per_dim(y, x[..., : h // 2, : w // 2])


def test_model_runs_on_other_sizes(model) -> None:
    """Convolutional all through: a target of another size that the squeezes accept works."""
    c, h, w = model.image_shape
    s = model.scale
    y = torch.randint(0, 2 if model.task == "segment" else 256, (1, c, h + 8, 2 * w), dtype=torch.uint8)
    x = torch.randint(0, 256, (1, model.cond_shape[0], (h + 8) // s, 2 * w // s), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.isfinite(model.bits_per_dim(y, x, seeded(0))).all()
    assert model.sample(1, 0.5, cond=x).shape == y.shape


def test_temperature_zero_decodes_zero_latents() -> None:
    torch.manual_seed(0)
    net = cflow_superres(**TINY_SR)
    x = torch.randint(0, 256, (1, *net.cond_shape), dtype=torch.uint8)
    zs = [torch.zeros(1, *s) for s in net.latent_shapes()]
    expected = net.dequantizer.quantize(net.decode(zs, x))
    assert torch.equal(net.sample(1, temperature=0.0, cond=x), expected)


def test_encode_decode_round_trip_given_the_condition(randomize: Callable) -> None:
    torch.manual_seed(0)
    net = cflow_superres(**TINY_SR).double()
    v = torch.rand(2, *net.image_shape, dtype=torch.float64)
    x = torch.randint(0, 256, (2, *net.cond_shape), dtype=torch.uint8)
    with torch.no_grad():
        net.encode(v, x)
    randomize(net, std=0.05, seed=2)
    with torch.no_grad():
        zs, _ = net.encode(v, x)
        torch.testing.assert_close(net.decode(zs, x), v, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "make", [lambda: cflow_superres(**TINY_SR), lambda: cflow_segment(size=8, hidden=4, vgg=(4, 4, 4))]
)
def test_conditional_logdet_is_slogdet_of_jacobian(
    make: Callable[[], ConditionalFlow], randomize: Callable, jacobian_logabsdet: Callable
) -> None:
    """For a fixed condition, log|det d(eps_1..eps_L)/dv| from encode == slogdet of the Jacobian."""
    torch.manual_seed(0)
    net = make().double()
    gen = seeded(0)
    x = torch.randint(0, 256, (1, *net.cond_shape), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        net.encode(torch.rand(4, *net.image_shape, generator=gen, dtype=torch.float64), x.expand(4, -1, -1, -1))
    randomize(net, std=0.1, seed=3)
    v = torch.rand(1, *net.image_shape, generator=gen, dtype=torch.float64)

    def flat_latents(vi: Tensor) -> Tensor:
        zs, _ = net.encode(vi[None], x)
        return torch.cat([z.reshape(-1) for z in zs])

    with torch.no_grad():
        _, logdet = net.encode(v, x)
    sign, logabsdet = jacobian_logabsdet(flat_latents, v[0])
    assert sign != 0
    torch.testing.assert_close(logdet[0], logabsdet, atol=1e-8, rtol=0)


def test_log_prob_is_minus_bpd_times_d_ln2(model) -> None:
    y, x = pair(model, 2, 0)
    with torch.no_grad():
        bpd = model.bits_per_dim(y, x, seeded(5))
        log_p = model.log_prob(y, x, seeded(5))
    torch.testing.assert_close(log_p, -bpd * math.prod(y.shape[1:]) * math.log(2.0))


# ---------------------------------------------------------------- binary dequantization (eq. 8)


def _binary_dequantizer(randomize: Callable) -> tuple[BinaryDequantize, Tensor, Tensor]:
    torch.manual_seed(0)
    deq = BinaryDequantize(1, cond_channels=2, steps=2).double()
    y = torch.randint(0, 2, (3, 1, 4, 4), dtype=torch.uint8)
    h = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        deq(y, h, dtype=torch.float64)  # ActNorm start
    randomize(deq, std=0.1, seed=4)
    return deq, y, h


def test_binary_noise_lies_on_the_side_of_its_label(randomize: Callable) -> None:
    deq, y, h = _binary_dequantizer(randomize)
    w, log_q = deq(y, h, seeded(0), torch.float64)  # w = v - 1/2
    assert torch.equal(deq.quantize(w), y)
    assert ((w > 0) == (y == 1)).all() and torch.isfinite(log_q).all()


def test_binary_labels_stay_apart_where_v_would_round_to_one_half() -> None:
    """softplus(-20) = 2e-9: 1/2 + 2e-9 is 1/2 in float32, but the centred w keeps its sign."""
    deq = BinaryDequantize(1, cond_channels=2, steps=1)
    deq.flow[0].initialized.fill_(True)
    y = torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.uint8)
    h = torch.zeros(1, 2, 1, 1)
    context = torch.cat([h, deq.squeeze(y.float() - 0.5)[0]], dim=1)
    with torch.no_grad():  # the noise that the flow maps to u = -20 everywhere
        eps, _ = deq.flow.inverse(torch.full((1, 4, 1, 1), -20.0), context)
        w, _ = deq.from_noise(deq.squeeze.inverse(eps)[0], y, h)
    assert torch.equal(deq.quantize(w), y) and (w.abs() > 1e-9).all()
    assert (0.5 + w.abs() == 0.5).all()  # what the uncentred v would have been


def test_binary_log_q_is_the_change_of_variables(randomize: Callable, jacobian_logabsdet: Callable) -> None:
    """log q(v | y) = log N(eps) - log|det dv/deps|, with the Jacobian taken by autograd."""
    deq, y, h = _binary_dequantizer(randomize)
    eps = torch.randn(3, 1, 4, 4, generator=seeded(1), dtype=torch.float64)
    with torch.no_grad():
        _, log_q = deq.from_noise(eps, y, h)
    for i in range(3):

        def noise_to_v(e: Tensor, i: int = i) -> Tensor:
            return deq.from_noise(e.reshape(1, 1, 4, 4), y[i : i + 1], h[i : i + 1])[0].reshape(-1)

        sign, logabsdet = jacobian_logabsdet(noise_to_v, eps[i].reshape(-1))
        assert sign != 0
        expected = -0.5 * (eps[i] ** 2).sum() - 8 * math.log(2 * math.pi) - logabsdet
        torch.testing.assert_close(log_q[i], expected, atol=1e-9, rtol=0)


def test_binary_dequantizer_draws_like_uniform_noise() -> None:
    """One uniform per dimension: data-parallel ranks can skip each other's draws the same way."""
    deq = BinaryDequantize(1, cond_channels=2, steps=1)
    y = torch.ones(2, 1, 4, 4, dtype=torch.uint8)
    gen = seeded(0)
    deq(y, torch.zeros(2, 2, 2, 2), gen)
    reference = seeded(0)
    torch.rand(y.shape, generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())


def test_non_binary_mask_is_refused_saying_what_is_expected() -> None:
    net = cflow_segment(size=8, hidden=4, vgg=(4, 4, 4))
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match="0 and 1"):
        net.bits_per_dim(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8), x)


def test_binary_bits_per_dim_has_no_bin_width_term(randomize: Callable) -> None:
    """bpd = (-log p(v) + log q) / (D ln 2): half-infinite noise has no 2^-bits bins."""
    torch.manual_seed(0)
    net = cflow_segment(size=8, hidden=4, vgg=(4, 4, 4), dequantizer_steps=1)
    y = torch.randint(0, 2, (2, 1, 8, 8), dtype=torch.uint8)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        bpd = net.bits_per_dim(y, x, seeded(3))
        log_p_v, log_q = net._dequantized_terms(y, x, seeded(3))
    torch.testing.assert_close(bpd, (-log_p_v + log_q) / (64 * math.log(2.0)))


# ---------------------------------------------------------------- factorized likelihoods


@pytest.mark.parametrize("mean, log_scale", [(0.5, -3.0), (0.0, -5.0), (1.02, -2.0), (0.3, 1.0)])
def test_discretized_logistic_sums_to_one(mean: float, log_scale: float) -> None:
    k = torch.arange(256, dtype=torch.float64)
    p = discretized_logistic_log_prob(k, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale)).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)


def test_discretized_logistic_matches_cdf_differences_and_has_finite_gradients() -> None:
    mean = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    log_s = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([0.0, 100.0, 255.0], dtype=torch.float64)
    log_p = discretized_logistic_log_prob(k, mean, log_s)
    s = math.exp(-3.0)
    cdf = lambda t: 1 / (1 + math.exp(-(t - 0.4) / s))  # noqa: E731
    expected = [math.log(cdf(1 / 256)), math.log(cdf(101 / 256) - cdf(100 / 256)), math.log(1 - cdf(255 / 256))]
    torch.testing.assert_close(log_p, torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0)
    log_p.sum().backward()
    assert torch.isfinite(mean.grad) and torch.isfinite(log_s.grad)


def test_weighted_bernoulli_is_normalised_and_trains_on_its_numerator() -> None:
    torch.manual_seed(0)
    net = FactorizedSegmenter(size=8, vgg=(4, 4, 4), beta=0.9)
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    ones, zeros = torch.ones(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    with torch.no_grad():
        # per-pixel P(1) + P(0) = 1, so 2^(-bpd) of the all-ones and all-zeros masks add up per pixel
        p1 = 2 ** (-net.bits_per_dim(ones, x))
        prob = net.probability(x)
        torch.testing.assert_close(p1, prob.log().mean().exp().reshape(1), atol=1e-6, rtol=0)
        p0 = 2 ** (-net.bits_per_dim(zeros, x))
        torch.testing.assert_close(p0, (1 - prob).log().mean().exp().reshape(1), atol=1e-6, rtol=0)
        logit = net.logits(x)
        expected = -(0.9 * torch.nn.functional.logsigmoid(logit)).mean() / math.log(2.0)
        torch.testing.assert_close(net.training_bits_per_dim(ones, x), expected.reshape(1), atol=1e-6, rtol=0)


def test_bad_targets_and_condition_batches_are_refused(model) -> None:
    y, x = pair(model, 2, 0)
    c = model.image_shape[0]
    with pytest.raises(ShapeError, match="2 targets but 1 conditions"):
        model.bits_per_dim(y, x[:1])
    with pytest.raises(ShapeError, match=f"{c}, H, W"):
        model.bits_per_dim(torch.cat([y, y], dim=1), x)
    with pytest.raises(DataError, match="0 and 1" if model.task == "segment" else r"\[0, 255\]"):
        model.bits_per_dim(y.to(torch.int32) * 300, x)
    with pytest.raises(DataError, match="divide by 255"):
        model.bits_per_dim(y, x.float())  # floats in 0..255 are not [0, 1]


def test_float_conditions_in_unit_range_equal_uint8_ones(model) -> None:
    y, x = pair(model, 2, 0)
    with torch.no_grad():
        a = model.bits_per_dim(y, x, seeded(0))
        b = model.bits_per_dim(y, x.double() / 255, seeded(0))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["cflow-seg", "factorized-seg"])
def test_segment_pads_and_crops_images_of_any_size(name: str) -> None:
    from msflow.analysis.segment import segment

    torch.manual_seed(0)
    net = msflow.create_model(name, **TINY[name]).eval()
    image = torch.randint(0, 256, (3, 18, 22), dtype=torch.uint8)
    out = segment(net, image, n=3, generator=seeded(0))
    assert out.mean.shape == (1, 18, 22) and out.samples.shape == (3, 1, 18, 22)
    assert ((out.mean >= 0) & (out.mean <= 1)).all()
