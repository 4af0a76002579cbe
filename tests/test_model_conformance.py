"""The model-level conformance suite (DESIGN.md section 8, issue 22 item 5).

Every registered preset is built tiny (``tests/model_cases.py``) and held to the same checks,
chosen by what it declares, not by its name:

- an invertible model's ``decode`` inverts ``encode`` (given the condition, for a conditional one);
- sampling gives integer images, and what it quantizes is finite: ``quantize`` refuses NaN and
  infinity, so a sample that came back at all was finite, and a model with broken weights
  raises a :class:`DataError` instead of drawing black images;
- with its subnets under bf16 autocast (``train.precision=bf16-mixed``) the model still
  inverts to well inside one quantization bin, although its latents moved;
- for every family and every option that changes its map, in float64, the log-det that
  ``encode`` reports is the slogdet of the autograd Jacobian from ``v`` to all the latents.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from model_cases import F64, JACOBIAN_CASES, batch, build_case, build_preset, continuous, family, seeded
from torch import Tensor, nn

import msflow
from msflow.distributions import standard_normal_log_prob
from msflow.errors import DataError, MsflowError
from msflow.models import model_capabilities
from msflow.nn import subnet_precision
from msflow.transforms import UniformDequantize
from msflow.transforms.binary_dequant import BinaryDequantize
from msflow.transforms.variational_dequant import VariationalDequantize

PRESETS = msflow.list_models()


@pytest.fixture(scope="module", params=PRESETS)
def model(request: pytest.FixtureRequest, randomize: Callable) -> nn.Module:
    """Each preset, narrowed, in float64 (built once for this module)."""
    return build_preset(request.param, randomize)


def flat(zs: list[Tensor]) -> Tensor:
    return torch.cat([z.reshape(z.shape[0], -1) for z in zs], dim=1)


def round_trip(model: nn.Module, v: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(all latents (B, D), decode(encode(v)))``."""
    with torch.no_grad():
        zs, _ = model.encode(v, cond)
        return flat(zs), model.decode(zs, cond)


# ---------------------------------------------------------------- every preset


def test_every_family_has_tiny_options_and_a_jacobian_case() -> None:
    """A new family must say how it is built tiny, and have its map checked against the Jacobian."""
    covered = {family(name) for name, _ in JACOBIAN_CASES.values()}
    for name in PRESETS:
        assert family(name) in covered or family(name) == "factorized", f"{name}: no Jacobian case for its family"


def test_decode_inverts_encode(model: nn.Module) -> None:
    if not model.invertible:
        pytest.skip(f"{type(model).__name__} is a factorized baseline, not a flow")
    x, cond = batch(model, 2, 0)
    v = continuous(model, x, cond, 1)
    z, back = round_trip(model, v, cond)
    assert torch.isfinite(z).all() and z.shape == (2, math.prod(v.shape[1:]))
    # float64 round-off, or for a CNF the fixed-step solver run backwards over the same grid
    atol = 1e-6 if model_capabilities(model.spec["name"]).cnf else 1e-9
    torch.testing.assert_close(back, v, atol=atol, rtol=0)
    assert torch.equal(model.dequantizer.quantize(back), x)


def test_samples_are_finite_integer_images(model: nn.Module) -> None:
    _, cond = batch(model, 1, 2)
    for temperature in (0.7, 1.0):
        images = model.sample(3, temperature=temperature, cond=cond, generator=seeded(3))
        assert images.dtype == torch.uint8 and images.shape == (3, *model.image_shape)
        assert int(images.max()) < 2**model.n_bits
    if model.invertible and not model.conditional:  # the same, before quantization
        v = model.decode(model.sample_latents(3, 1.0, seeded(3)))
        assert torch.isfinite(v).all()


def test_a_model_with_nan_weights_refuses_to_sample(model: nn.Module) -> None:
    broken = copy.deepcopy(model)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(math.nan)
    _, cond = batch(model, 1, 2)
    # quantize's DataError, or a CNF's SolverError when its solve turns non-finite first
    with pytest.raises(MsflowError, match="not finite|non-finite"):
        broken.sample(2, temperature=0.7, cond=cond, generator=seeded(3))


@pytest.mark.parametrize("name", PRESETS)
def test_bf16_mixed_subnets_keep_the_model_invertible(name: str, randomize: Callable) -> None:
    model = build_preset(name, randomize, torch.float32)
    if not model.invertible:
        pytest.skip(f"{type(model).__name__} is a factorized baseline, not a flow")
    x, cond = batch(model, 2, 0)
    v = continuous(model, x, cond, 1)
    z32, _ = round_trip(model, v, cond)
    with subnet_precision("bf16-mixed"):
        z16, back = round_trip(model, v, cond)
    # bf16 really ran: the subnets' outputs, and with them the latents, moved by its rounding
    assert (z16 - z32).abs().max() > 1e-4
    error = (back - v).abs()
    if model_capabilities(name).cnf:
        # The backwards solve evaluates the field at other points than the forward one, so its bf16
        # rounding does not cancel: the round trip is off by about the bf16 error of the field.
        assert error.max() < 5e-4  # an eighth of a quantization bin (1/256)
        return
    # A block's inverse recomputes the subnet outputs of its forward pass from the same inputs,
    # so most values come back to float32 round-off (not recomputing leaves a median error of
    # ~1e-4). Where float32 round-off at a later block flips a bf16 rounding in an earlier
    # subnet, the error stays within half a bin (64x64 Glow: up to ~1e-3 on 1 value in 10^3).
    assert error.median() < 1e-6
    assert error.max() < 0.5 / 256


# ---------------------------------------------------------------- quantize refuses non-finite values


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "dequantizer",
    [
        UniformDequantize(8),
        UniformDequantize(1),
        VariationalDequantize(1, steps=1, hidden=4),
        BinaryDequantize(1, 2, 1),
    ],
    ids=["uniform8", "uniform1", "variational", "binary"],
)
def test_quantize_refuses_non_finite_values_saying_what_to_do(dequantizer: nn.Module, bad: float) -> None:
    v = torch.full((2, 1, 2, 2), 0.3)
    assert dequantizer.quantize(v).dtype == torch.uint8
    v[1, 0, 1, 0] = bad
    with pytest.raises(DataError, match=r"1 of 8 values to quantize are not finite.*lower temperature"):
        dequantizer.quantize(v)


# ---------------------------------------------------------------- the whole model is exact


@pytest.mark.parametrize("case", JACOBIAN_CASES)
def test_whole_model_logdet_is_slogdet_of_the_autograd_jacobian(
    case: str, randomize: Callable, jacobian_logabsdet: Callable
) -> None:
    model = build_case(case, randomize)
    x, cond = batch(model, 2, 0)
    v = continuous(model, x, cond, 1)
    with torch.no_grad():
        _, logdet = model.encode(v, cond)
    assert logdet.abs().min() > 1e-2  # not a vacuous volume-preserving map
    for i in range(v.shape[0]):
        cond_i = None if cond is None else cond[i : i + 1]
        sign, reference = jacobian_logabsdet(lambda vi, c=cond_i: flat(model.encode(vi[None], c)[0])[0], v[i])
        assert sign != 0
        torch.testing.assert_close(logdet[i], reference, atol=1e-8, rtol=0)


def test_variational_bits_per_dim_is_the_change_of_variables_of_both_maps(
    randomize: Callable, jacobian_logabsdet: Callable
) -> None:
    """CAFLOW with learned noise: bits/dim = -(log N(Z) + log|dZ/dv|) + log N(eps) - log|du/d eps|,
    per dimension in bits plus 8, with both Jacobians from autograd (the noise drawn as the model draws it)."""
    model = build_case("caflow-variational-bounded", randomize)
    x, cond = batch(model, 1, 0)
    deq = model.dequantizer
    u01 = torch.rand(x.shape, generator=seeded(5), dtype=torch.float32).to(F64)
    eps = torch.special.ndtri(u01.clamp(torch.finfo(F64).tiny, 1 - torch.finfo(F64).eps))
    v, _ = deq.from_noise(eps, x)
    _, log_du = jacobian_logabsdet(lambda e: deq.from_noise(e[None], x)[0][0] * 256, eps[0])
    _, log_dz = jacobian_logabsdet(lambda vi: flat(model.encode(vi[None], cond)[0])[0], v[0])
    with torch.no_grad():
        z = flat(model.encode(v, cond)[0])
        bpd = model.bits_per_dim(x, cond, seeded(5))
    log_q = standard_normal_log_prob(eps)[0] - log_du
    dims = x[0].numel()
    expected = -(standard_normal_log_prob(z)[0] + log_dz - log_q) / (dims * math.log(2)) + 8
    torch.testing.assert_close(bpd[0], expected, atol=1e-9, rtol=0)
