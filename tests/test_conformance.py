"""Conformance suite: every invertible block against the contract of DESIGN.md section 2.

One list of block configurations, one set of checks parametrised over it: shapes, exact
inversion, cancelling log-dets, log-dets equal to the slogdet of the autograd Jacobian in both
directions, (B,) log-dets with the input's dtype and device, no cross-sample dependence,
condition handling and state_dict round trips. Math runs in float64 (blocks are converted with
``.double()``); every parameter is perturbed first, because coupling nets and split priors start
as exact identities and would make the checks vacuous.

Block-specific checks (ActNorm initialisation, Squeeze layout and shape errors, split-prior
density, uniform dequantization) follow the suite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from msflow.core import FlowSequential, Inverse, InvertibleModule
from msflow.errors import DataError, ShapeError
from msflow.nn import ConvVectorField, conv_subnet, resnet_subnet
from msflow.nn.subnets import instance_norm_subnet
from msflow.transforms import (
    CNF,
    ActNorm,
    AdditiveCoupling,
    Affine,
    AffineCoupling,
    AffineInjector,
    ChannelPermutation,
    DualAffineCoupling,
    GaussianSplitPrior,
    HaarPyramid,
    InvConv1x1,
    Logit,
    MARSplitPrior,
    MixLogCDFCoupling,
    ODESolverConfig,
    OrthogonalPyramid,
    RQActivation,
    SolverSettings,
    Squeeze,
    StridedInvConv,
    UniformDequantize,
    UnimodularPyramid,
)
from msflow.transforms.tarflow import TarFlowBlock

B = 3
COND_CHANNELS = 2
F64 = torch.float64


def subnet() -> Callable:
    return conv_subnet(hidden=8)


def exact_cnf(cond_channels: int = 0) -> CNF:
    """A CNF with an exact trace on a fixed RK4 grid: the map is then a fixed function of each
    sample (no batch-wide adaptive step), invertible and with its log-det to ~1e-13."""
    field = ConvVectorField(2, hidden=(8, 8), cond_channels=cond_channels)
    solver = ODESolverConfig.both(SolverSettings("rk4", step_size=1 / 16))
    return CNF(field, 0.5, divergence="exact", solver=solver, adjoint=False)


@dataclass(frozen=True)
class Case:
    """A block configuration: how to build it and what inputs it takes."""

    name: str
    make: Callable[[], InvertibleModule]
    in_shape: tuple[int, int, int] = (4, 4, 6)  # non-square: catches H/W mix-ups
    cond_channels: int = 0
    unit_input: bool = False  # inputs must lie in (0, 1) (Logit)

    @property
    def conditional(self) -> bool:
        return self.cond_channels > 0


CASES = [
    Case("actnorm", lambda: ActNorm(4)),
    Case("invconv1x1-plain", lambda: InvConv1x1(4, lu=False)),
    Case("invconv1x1-lu", lambda: InvConv1x1(4, lu=True)),
    Case("affine-coupling-sigmoid", lambda: AffineCoupling(4, subnet=subnet(), scale="sigmoid")),
    Case("affine-coupling-tanh", lambda: AffineCoupling(4, subnet=subnet(), scale="tanh")),
    Case("affine-coupling-odd-channels", lambda: AffineCoupling(5, subnet=subnet()), in_shape=(5, 4, 6)),
    Case("additive-coupling", lambda: AdditiveCoupling(4, subnet=subnet())),
    Case(
        "affine-coupling-cond",
        lambda: AffineCoupling(4, subnet=subnet(), cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "affine-coupling-tanh-cond",
        lambda: AffineCoupling(4, subnet=subnet(), scale="tanh", cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "additive-coupling-cond",
        lambda: AdditiveCoupling(4, subnet=subnet(), cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case(  # Winkler et al.'s segmentation coupling: volume-preserving, instance-norm subnet (Table 7)
        "additive-coupling-instancenorm-cond",
        lambda: AdditiveCoupling(4, subnet=instance_norm_subnet(8), cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "affine-coupling-atan-cond",
        lambda: AffineCoupling(4, subnet=subnet(), scale="atan", cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case("affine-injector-cond", lambda: AffineInjector(4, COND_CHANNELS, subnet()), cond_channels=COND_CHANNELS),
    Case(
        "affine-injector-sigmoid-odd-cond",
        lambda: AffineInjector(5, COND_CHANNELS, subnet(), scale="sigmoid"),
        in_shape=(5, 4, 6),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        # CAFLOW's conditional flow step (appendix A.2): ActNorm, 1x1 conv, injector, coupling.
        "caflow-conditional-step",
        lambda: FlowSequential(
            ActNorm(4),
            InvConv1x1(4),
            AffineInjector(4, COND_CHANNELS, subnet()),
            AffineCoupling(4, subnet=subnet(), scale="atan", cond_channels=COND_CHANNELS),
        ),
        cond_channels=COND_CHANNELS,
    ),
    Case("permutation-reverse", lambda: ChannelPermutation(4, "reverse")),
    Case("permutation-shuffle", lambda: ChannelPermutation(4, "shuffle")),
    Case("squeeze", lambda: Squeeze()),
    Case("split-prior-top", lambda: GaussianSplitPrior(4, keep=0)),
    Case("split-prior-keep2", lambda: GaussianSplitPrior(4, keep=2)),
    Case("split-prior-keep2-channelwise", lambda: GaussianSplitPrior(4, keep=2, from_kept=False)),
    Case(
        "split-prior-keep2-channelwise-cond",
        lambda: GaussianSplitPrior(4, keep=2, cond_channels=COND_CHANNELS, from_kept=False),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "split-prior-keep2-cond",
        lambda: GaussianSplitPrior(4, keep=2, cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "split-prior-top-cond",
        lambda: GaussianSplitPrior(4, keep=0, cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case("strided-conv-k2-lu", lambda: StridedInvConv(4, k=2)),
    Case("strided-conv-k2-plain", lambda: StridedInvConv(4, k=2, kappa=0.8, lu=False)),
    Case("strided-conv-k1", lambda: StridedInvConv(4, k=1, kappa=1.3)),
    Case("dual-coupling", lambda: DualAffineCoupling(4, subnet=subnet(), init_log_scale=0.2)),
    Case("dual-coupling-odd-m1", lambda: DualAffineCoupling(5, subnet=subnet(), mixtures=1), in_shape=(5, 4, 6)),
    Case(
        "dual-coupling-cond",
        lambda: DualAffineCoupling(4, subnet=subnet(), cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case("rq-activation", lambda: RQActivation(4, bins=6, beta=0.8, width=2.0)),
    Case(
        "balanced-block",
        lambda: FlowSequential(
            StridedInvConv(4, k=2),
            DualAffineCoupling(16, subnet=resnet_subnet(hidden=8), init_log_scale=-math.log(0.8)),
            RQActivation(16, bins=4, beta=0.8),
        ),
    ),
    Case("affine-fixed", lambda: Affine(-1.7, 0.3)),
    Case("logit", lambda: Logit(0.05), unit_input=True),
    Case("logit-alpha0", lambda: Logit(0.0), unit_input=True),
    Case(
        "flow-sequential",
        lambda: FlowSequential(
            ActNorm(4),
            InvConv1x1(4),
            AffineCoupling(4, subnet=subnet()),
            ChannelPermutation(4, "shuffle"),
            Squeeze(),
            AdditiveCoupling(16, subnet=subnet()),
            GaussianSplitPrior(16, keep=8),
        ),
    ),
    Case(
        "flow-sequential-cond",
        lambda: FlowSequential(
            ActNorm(4),
            AffineCoupling(4, subnet=subnet(), cond_channels=COND_CHANNELS),
            InvConv1x1(4, lu=False),
            AdditiveCoupling(4, subnet=subnet(), cond_channels=COND_CHANNELS),
            GaussianSplitPrior(4, keep=2, cond_channels=COND_CHANNELS),
        ),
        cond_channels=COND_CHANNELS,
    ),
    Case("inverse-affine-coupling", lambda: Inverse(AffineCoupling(4, subnet=subnet(), scale="sigmoid"))),
    Case("inverse-squeeze", lambda: Inverse(Squeeze())),
    Case(
        "inverse-flow-sequential-squeeze",
        lambda: Inverse(FlowSequential(Squeeze(), AffineCoupling(16, subnet=subnet()))),
        in_shape=(16, 2, 3),
    ),
    Case("mixlogcdf-coupling", lambda: MixLogCDFCoupling(4, subnet=subnet(), mixtures=3)),
    Case("mixlogcdf-coupling-odd-k1", lambda: MixLogCDFCoupling(5, subnet=subnet(), mixtures=1), in_shape=(5, 4, 6)),
    Case(
        "mixlogcdf-coupling-cond",
        lambda: MixLogCDFCoupling(4, subnet=subnet(), mixtures=2, cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case("mar-prior-keep2", lambda: MARSplitPrior(4, keep=2, hidden=4, embed_hidden=4, embed_channels=2)),
    Case("mar-prior-top", lambda: MARSplitPrior(4, keep=0, hidden=4, num_layers=2, kernel_size=5, dilation=2)),
    Case(
        "mar-prior-keep1-cond",
        lambda: MARSplitPrior(4, keep=1, cond_channels=COND_CHANNELS, hidden=4, embed_hidden=4),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "mar-prior-top-cond",
        lambda: MARSplitPrior(4, keep=0, cond_channels=COND_CHANNELS, hidden=4, embed_hidden=4),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "marscf-step-mixlogcdf-mar",
        lambda: FlowSequential(
            ActNorm(4),
            InvConv1x1(4),
            MixLogCDFCoupling(4, subnet=subnet(), mixtures=2),
            MARSplitPrior(4, keep=2, hidden=4, embed_hidden=4),
        ),
    ),
    Case("pyramid-unimodular", lambda: UnimodularPyramid()),
    Case("pyramid-haar", lambda: HaarPyramid()),
    Case("pyramid-orthogonal", lambda: OrthogonalPyramid()),
    Case("inverse-pyramid-haar", lambda: Inverse(HaarPyramid()), in_shape=(8, 2, 3)),
    Case("tarflow-p2", lambda: TarFlowBlock((4, 4, 6), patch=2, width=8, layers=1)),
    Case("tarflow-p1-reverse-2layers", lambda: TarFlowBlock((4, 4, 6), patch=1, width=8, layers=2, reverse=True)),
    Case(
        "tarflow-p2-cond",
        lambda: TarFlowBlock((4, 4, 6), patch=2, width=8, layers=1, cond_channels=COND_CHANNELS),
        cond_channels=COND_CHANNELS,
    ),
    Case(
        "tarflow-flow-sequential-cond",
        lambda: FlowSequential(
            TarFlowBlock((4, 4, 6), patch=2, width=8, layers=1, cond_channels=COND_CHANNELS),
            TarFlowBlock((4, 4, 6), patch=2, width=8, layers=1, cond_channels=COND_CHANNELS, reverse=True),
        ),
        cond_channels=COND_CHANNELS,
    ),
    Case("cnf-exact-rk4", lambda: exact_cnf(), in_shape=(2, 2, 3)),
    Case("cnf-exact-rk4-cond", lambda: exact_cnf(COND_CHANNELS), in_shape=(2, 2, 3), cond_channels=COND_CHANNELS),
]
CONDITIONAL = [c for c in CASES if c.conditional]
UNCONDITIONAL = [c for c in CASES if not c.conditional]


def ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


# ---------------------------------------------------------------- helpers


def make_input(case: Case, seed: int, dtype: torch.dtype = F64, batch: int = B) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *case.in_shape)
    if case.unit_input:
        return (0.01 + 0.98 * torch.rand(shape, generator=gen, dtype=F64)).to(dtype)
    return (torch.randn(shape, generator=gen, dtype=F64) * 1.5 + 0.3).to(dtype)


def make_cond(case: Case, seed: int, dtype: torch.dtype = F64, batch: int = B) -> Tensor | None:
    if not case.conditional:
        return None
    gen = torch.Generator().manual_seed(seed)
    _, h, w = case.in_shape
    return torch.randn(batch, case.cond_channels, h, w, generator=gen, dtype=F64).to(dtype)


def build(case: Case, randomize: Callable, dtype: torch.dtype = F64, seed: int = 1) -> InvertibleModule:
    """Build ``case``, run the data-dependent init on its own batch, then perturb every parameter."""
    torch.manual_seed(seed)  # random rotations and shuffles
    block = case.make().to(dtype)
    with torch.no_grad():
        block(make_input(case, 100, dtype), make_cond(case, 101, dtype))
    randomize(block, std=0.1, seed=seed)
    return block


def actnorms(block: torch.nn.Module) -> list[ActNorm]:
    return [m for m in block.modules() if isinstance(m, ActNorm)]


@pytest.fixture(params=CASES, ids=ids(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def setup(case: Case, randomize: Callable) -> tuple[InvertibleModule, Tensor, Tensor | None]:
    """A prepared float64 block, an input batch and its condition."""
    return build(case, randomize), make_input(case, 0), make_cond(case, 1)


# ---------------------------------------------------------------- the suite


def test_output_shape(case: Case, setup) -> None:
    block, x, cond = setup
    z, _ = block(x, cond)
    assert z.shape[0] == B
    assert z.numel() == x.numel(), "an invertible block must preserve the number of entries"
    assert tuple(z.shape[1:]) == tuple(block.output_shape(case.in_shape))
    x_back, _ = block.inverse(z, cond)
    assert x_back.shape == x.shape


def test_block_is_not_identity(setup) -> None:
    """Guards the suite against vacuity: the prepared block really transforms its input."""
    block, x, cond = setup
    z, _ = block(x, cond)
    assert z.shape != x.shape or (z - x).abs().max() > 1e-3


def test_inverse_of_forward(setup) -> None:
    block, x, cond = setup
    with torch.no_grad():
        z, _ = block(x, cond)
        x_back, _ = block.inverse(z, cond)
        z_again, _ = block(x_back, cond)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(z_again, z, atol=1e-10, rtol=0)


def test_logdets_cancel(setup) -> None:
    block, x, cond = setup
    with torch.no_grad():
        z, ld_forward = block(x, cond)
        _, ld_inverse = block.inverse(z, cond)
    torch.testing.assert_close(ld_forward + ld_inverse, torch.zeros_like(ld_forward), atol=1e-10, rtol=0)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_logdet_matches_autograd_jacobian(setup, direction: str, jacobian_logabsdet: Callable) -> None:
    block, x, cond = setup
    with torch.no_grad():
        z, _ = block(x, cond)
    if direction == "forward":
        fn, point = block.forward, x
    else:
        fn, point = block.inverse, z
    with torch.no_grad():
        _, logdet = fn(point, cond)
    for i in range(B):
        c = None if cond is None else cond[i : i + 1]
        sign, logabsdet = jacobian_logabsdet(lambda p, c=c: fn(p[None], c)[0][0], point[i])
        assert sign != 0, f"singular Jacobian for sample {i}"
        torch.testing.assert_close(logdet[i], logabsdet, atol=1e-8, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_logdet_shape_dtype_device(case: Case, randomize: Callable, dtype: torch.dtype) -> None:
    block = build(case, randomize, dtype=dtype)
    x, cond = make_input(case, 0, dtype), make_cond(case, 1, dtype)
    z, ld_forward = block(x, cond)
    _, ld_inverse = block.inverse(z, cond)
    for ld in (ld_forward, ld_inverse):
        assert ld.shape == (B,)
        assert ld.dtype == dtype
        assert ld.device == x.device
    assert z.dtype == dtype


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_no_cross_sample_dependence(setup, direction: str) -> None:
    block, x, cond = setup
    with torch.no_grad():
        fn = block.forward if direction == "forward" else block.inverse
        point = x if direction == "forward" else block(x, cond)[0]
        out, ld = fn(point, cond)
        changed = point.clone()
        changed[1] = 0.7 * point[2] + 0.3 * point[0]  # stays in (0, 1) for Logit
        out2, ld2 = fn(changed, cond)
    for i in (0, 2):
        torch.testing.assert_close(out2[i], out[i], atol=1e-12, rtol=0)
        torch.testing.assert_close(ld2[i], ld[i], atol=1e-12, rtol=0)
    assert (out2[1] - out[1]).abs().max() > 1e-6


@pytest.mark.parametrize("case", CONDITIONAL, ids=ids(CONDITIONAL))
def test_condition_changes_output(case: Case, setup) -> None:
    block, x, cond = setup
    other = make_cond(case, 999)
    with torch.no_grad():
        z, ld = block(x, cond)
        z_other, ld_other = block(x, other)
        x_other, _ = block.inverse(z, other)
    assert (z - z_other).abs().max() > 1e-4
    assert (x - x_other).abs().max() > 1e-4
    if not isinstance(block, AdditiveCoupling):
        assert (ld - ld_other).abs().max() > 1e-6


@pytest.mark.parametrize("case", CONDITIONAL, ids=ids(CONDITIONAL))
def test_missing_condition_raises(case: Case, setup) -> None:
    block, x, cond = setup
    z, _ = block(x, cond)
    with pytest.raises(ValueError, match="cond"):
        block(x)
    with pytest.raises(ValueError, match="cond"):
        block.inverse(z)


@pytest.mark.parametrize("case", UNCONDITIONAL, ids=ids(UNCONDITIONAL))
def test_unconditional_block_ignores_cond(case: Case, setup) -> None:
    block, x, _ = setup
    _, h, w = case.in_shape
    junk = torch.randn(B, COND_CHANNELS, h, w, dtype=F64)
    with torch.no_grad():
        z, ld = block(x)
        z_c, ld_c = block(x, junk)
        x_c, _ = block.inverse(z, junk)
    torch.testing.assert_close(z_c, z, atol=0, rtol=0)
    torch.testing.assert_close(ld_c, ld, atol=0, rtol=0)
    torch.testing.assert_close(x_c, x, atol=1e-10, rtol=0)


def test_state_dict_round_trip(case: Case, setup) -> None:
    block, _, _ = setup
    fresh = build_fresh(case)
    fresh.load_state_dict(block.state_dict())
    for norm in actnorms(fresh):
        assert bool(norm.initialized), "the init flag must travel in state_dict()"
    # A batch with other statistics: a re-initialising ActNorm would give different outputs.
    x_new = make_input(case, 77)
    if not case.unit_input:
        x_new = x_new * 3.0 - 2.0
    cond = make_cond(case, 78)
    with torch.no_grad():
        z_fresh, ld_fresh = fresh(x_new, cond)
        z_ref, ld_ref = block(x_new, cond)
        x_fresh, _ = fresh.inverse(z_ref, cond)
    torch.testing.assert_close(z_fresh, z_ref, atol=0, rtol=0)
    torch.testing.assert_close(ld_fresh, ld_ref, atol=0, rtol=0)
    torch.testing.assert_close(x_fresh, x_new, atol=1e-10, rtol=0)


def build_fresh(case: Case) -> InvertibleModule:
    """A new, uninitialised block of the same configuration (other random rotations/shuffles)."""
    torch.manual_seed(12345)
    return case.make().double()


# ---------------------------------------------------------------- core


def test_flow_sequential_rejects_non_invertible_blocks() -> None:
    with pytest.raises(TypeError, match="InvertibleModule"):
        FlowSequential(ActNorm(2), torch.nn.Conv2d(2, 2, 1))


def test_flow_sequential_output_shape_names_the_failing_block() -> None:
    flow = FlowSequential(Squeeze(), ActNorm(4), Squeeze())
    assert flow.output_shape((1, 8, 8)) == (16, 2, 2)
    with pytest.raises(ShapeError, match="block 2 \\(Squeeze\\)"):
        flow.output_shape((1, 6, 6))


def test_inverse_swaps_directions(randomize: Callable) -> None:
    inner = randomize(AffineCoupling(4, subnet=subnet()).double())
    wrapped = Inverse(inner)
    x = torch.randn(2, 4, 3, 3, dtype=F64)
    for a, b in zip(wrapped(x), inner.inverse(x), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for a, b in zip(wrapped.inverse(x), inner(x), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------- ActNorm


def test_actnorm_zero_variance_channel_raises() -> None:
    x = torch.randn(4, 3, 4, 4, dtype=F64)
    x[:, 1] = 0.5
    norm = ActNorm(3).double()
    with pytest.raises(ValueError, match="zero variance"):
        norm(x)
    assert not bool(norm.initialized)


def test_actnorm_init_standardises_each_channel() -> None:
    scale = torch.tensor([0.5, 3.0, 10.0], dtype=F64).view(1, 3, 1, 1)
    shift = torch.tensor([-4.0, 0.0, 7.0], dtype=F64).view(1, 3, 1, 1)
    x = torch.randn(16, 3, 4, 4, dtype=F64) * scale + shift
    norm = ActNorm(3).double()
    z, logdet = norm(x)
    flat = z.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3, dtype=F64), atol=1e-10, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(3, dtype=F64), atol=1e-10, rtol=0)
    std = x.transpose(0, 1).reshape(3, -1).std(1, unbiased=False)
    torch.testing.assert_close(logdet, (-16 * std.log().sum()).expand(16), atol=1e-10, rtol=0)
    assert bool(norm.initialized)


def test_actnorm_initialises_only_once() -> None:
    norm = ActNorm(2).double()
    norm(torch.randn(8, 2, 4, 4, dtype=F64))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    norm(torch.randn(8, 2, 4, 4, dtype=F64) * 5 + 3)
    for key, value in norm.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------- Squeeze


def test_squeeze_layout() -> None:
    x = torch.arange(2 * 4 * 6, dtype=F64).view(1, 2, 4, 6)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 8, 2, 3)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                torch.testing.assert_close(z[0, 4 * c + 2 * i + j], x[0, c, i::2, j::2], atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(3, 5, 4), (3, 4, 5), (1, 7, 7)], ids=["odd-height", "odd-width", "odd-both"])
def test_squeeze_output_shape_rejects_odd_sizes(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ShapeError, match="pad to"):
        Squeeze().output_shape(shape)


# ---------------------------------------------------------------- split prior


def test_split_prior_is_a_gaussian_density(randomize: Callable) -> None:
    """log N(z; mu(h), sigma(h)) == log N(eps; 0, I) + logdet, against torch.distributions."""
    prior = randomize(GaussianSplitPrior(4, keep=2).double(), std=0.3)
    x = torch.randn(3, 4, 4, 4, dtype=F64)
    out, logdet = prior(x)
    eps = out[:, 2:]
    std_normal = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
    via_eps = std_normal.log_prob(eps).sum((1, 2, 3)) + logdet
    mu, log_sigma = prior._mean_log_sigma(x[:, :2], None)
    direct = torch.distributions.Normal(mu, log_sigma.exp()).log_prob(x[:, 2:]).sum((1, 2, 3))
    torch.testing.assert_close(via_eps, direct, atol=1e-10, rtol=0)
    torch.testing.assert_close(out[:, :2], x[:, :2], atol=0, rtol=0)


# ---------------------------------------------------------------- dequantization


def test_dequantize_round_trip_and_range() -> None:
    deq = UniformDequantize(8)
    x = torch.arange(256, dtype=torch.uint8).repeat(8).view(2, 4, 16, 16)
    v, log_q = deq(x, generator=torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32
    assert torch.equal(deq.quantize(v), x)
    assert float(v.min()) >= 0.0 and float(v.max()) < 1.0
    assert torch.equal(log_q, torch.zeros(2))


def test_dequantize_float64_and_fewer_bits() -> None:
    deq = UniformDequantize(5)
    x = torch.arange(32, dtype=torch.float64).repeat(4).view(2, 1, 8, 8)
    v, _ = deq(x, dtype=F64)
    assert v.dtype == F64
    assert torch.equal(deq.quantize(v), x.to(torch.uint8))
    assert float(v.max()) < 1.0
    with pytest.raises(DataError):
        deq(torch.full((1, 1, 2, 2), 32, dtype=torch.uint8))


def test_dequantize_never_leaves_the_bin_in_float32() -> None:
    """quantize(dequantize(x)) == x and v < 1 must hold for *every* noise draw.

    In float32 ``x + u`` rounds up to ``x + 1`` when ``u`` is within half an ulp of 1 (about
    one pixel in 10^5 for x >= 128), which puts ``v`` in the next bin, or at exactly 1.0 for
    x = 255. A few million pixels make such draws near-certain.
    """
    deq = UniformDequantize(8)
    x = torch.arange(256, dtype=torch.uint8).repeat(1 << 14).view(4, 1, 1024, 1024)
    v, _ = deq(x, generator=torch.Generator().manual_seed(0))
    wrong = int((deq.quantize(v) != x).sum())
    assert wrong == 0, f"{wrong} of {x.numel()} pixels were dequantized into the next bin"
    white = torch.full((4, 1, 512, 512), 255, dtype=torch.uint8)
    v_white, _ = deq(white, generator=torch.Generator().manual_seed(1))
    assert float(v_white.max()) < 1.0, f"{int((v_white >= 1).sum())} values of v reached 1.0"


def test_dequantize_seeded_generator_is_reproducible() -> None:
    deq = UniformDequantize(8)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    v1, _ = deq(x, generator=torch.Generator().manual_seed(3))
    v2, _ = deq(x, generator=torch.Generator().manual_seed(3))
    v3, _ = deq(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(v1, v2)
    assert not torch.equal(v1, v3)


@pytest.mark.parametrize(
    "bad",
    [
        torch.full((1, 1, 2, 2), 0.5),
        torch.rand(1, 1, 2, 2),
        torch.full((1, 1, 2, 2), 256, dtype=torch.int64),
        torch.full((1, 1, 2, 2), -1, dtype=torch.int64),
        torch.full((1, 1, 2, 2), 300.0),
    ],
    ids=["half", "unit-floats", "256", "negative", "float-300"],
)
def test_dequantize_rejects_bad_pixels(bad: Tensor) -> None:
    with pytest.raises(DataError):
        UniformDequantize(8)(bad)


def test_dequantize_accepts_integer_valued_floats() -> None:
    deq = UniformDequantize(8)
    x = torch.tensor([0.0, 17.0, 255.0]).view(1, 1, 1, 3)
    v, _ = deq(x)
    assert torch.equal(deq.quantize(v), x.to(torch.uint8))


def test_affine_and_logit_logdets_closed_form() -> None:
    v = 0.01 + 0.98 * torch.rand(2, 1, 3, 3, dtype=F64)
    _, ld = Affine(2.0, -1.0)(v)
    torch.testing.assert_close(ld, torch.full((2,), 9 * math.log(2.0), dtype=F64))
    alpha = 0.05
    _, ld = Logit(alpha)(v)
    s = alpha + (1 - 2 * alpha) * v
    expected = (math.log(1 - 2 * alpha) - torch.log(s * (1 - s))).sum((1, 2, 3))
    torch.testing.assert_close(ld, expected, atol=1e-12, rtol=0)
