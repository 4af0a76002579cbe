"""Continuous normalizing flow block: closed forms, trace estimators, gradients, solver handling.

The conformance suite (test_conformance.py) checks the CNF against the block contract with an
exact trace; here: a linear field against ``expm(T A) x`` and ``T tr(A)``, Hutchinson against
the exact trace over many probes, adjoint against direct gradients, RNODE regularizers and
STEER in closed form, NFE counting, solver settings and solver-failure errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from msflow.errors import ConfigError, MsflowError
from msflow.nn.odefunc import ConvVectorField, conv_vector_field
from msflow.nn.subnets import subnet_precision
from msflow.transforms import CNF, ODESolverConfig, SolverError, SolverSettings
from msflow.transforms.cnf import gaussian_probe, skip_logdets
from msflow.transforms.ode_solver import solver_errors_in_backward

F64 = torch.float64
TIGHT = ODESolverConfig.both(SolverSettings("dopri5", rtol=1e-10, atol=1e-10))


def rk4(step: float) -> ODESolverConfig:
    return ODESolverConfig.both(SolverSettings("rk4", step_size=step))


class LinearField(nn.Module):
    """``f(x, t) = A x`` over the flattened non-batch dimensions."""

    def __init__(self, a: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return (x.flatten(1) @ self.a.T).view_as(x)


class ConstantField(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value, dtype=F64))

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return torch.zeros_like(x) + self.value


class BlowUpField(nn.Module):
    """``dx/dt = 10 x^2``: infinite at ``t = 1 / (10 x0)``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.scale * x * x


def random_field(channels: int = 2, cond_channels: int = 0, seed: int = 0, std: float = 0.2) -> ConvVectorField:
    torch.manual_seed(seed)
    field = ConvVectorField(channels, hidden=(8, 8), cond_channels=cond_channels).double()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(torch.randn_like(p) * std)
    return field


def linear_matrix(d: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, d, generator=gen, dtype=F64) * 0.4


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("end_time", [1.0, 0.3])
def test_linear_field_matches_matrix_exponential(end_time: float) -> None:
    a = linear_matrix(12)
    cnf = CNF(LinearField(a), end_time, divergence="exact", solver=TIGHT, adjoint=False).double().eval()
    x = torch.randn(3, 3, 2, 2, dtype=F64)
    with torch.no_grad():
        z, logdet = cnf(x)
        x_back, logdet_inv = cnf.inverse(z)
    expected = (x.flatten(1) @ torch.linalg.matrix_exp(end_time * a).T).view_as(x)
    torch.testing.assert_close(z, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet, torch.full((3,), end_time * a.trace().item(), dtype=F64), atol=1e-8, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-8, rtol=0)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)


def test_hutchinson_uses_one_probe_per_solve() -> None:
    """For ``f = A x`` the estimate is exactly ``T eps^T A eps`` for the probe of that solve;
    re-drawing the probe at every evaluation would average several probes instead."""
    a = linear_matrix(8, seed=1)
    cnf = CNF(LinearField(a), 1.0, solver=TIGHT, adjoint=False, probe_seed=5).double().eval()
    x = torch.randn(4, 2, 2, 2, dtype=F64)
    with torch.no_grad():
        _, logdet = cnf(x)
    eps = gaussian_probe(x, torch.Generator().manual_seed(5)).flatten(1)
    torch.testing.assert_close(logdet, ((eps @ a.T) * eps).sum(1), atol=1e-8, rtol=0)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_for_exact_trace(probe: str) -> None:
    """Many copies of one input in a batch get independent probes: their mean log-det (and
    Jacobian-norm regularizer) lies within 4 standard errors of the exact values."""
    field = random_field(seed=2)
    options = {"solver": rk4(0.25), "adjoint": False, "jacobian_weight": 1.0}
    exact = CNF(field, 1.0, divergence="exact", **options).double()
    hutch = CNF(field, 1.0, divergence="hutchinson", probe=probe, **options).double()
    x = torch.randn(1, 2, 3, 3, dtype=F64).expand(600, -1, -1, -1)
    with torch.no_grad():
        _, ld_exact = exact(x[:1])
        jac_exact = exact.last_regularizers["jacobian"]
        _, ld = hutch(x)
        jac = hutch.last_regularizers["jacobian"]
    assert abs(ld_exact.item()) > 0.1, "the field must have a non-trivial trace"
    for estimates, target in ((ld, ld_exact), (jac, jac_exact)):
        stderr = estimates.std() / math.sqrt(estimates.numel())
        assert stderr > 0
        assert abs(estimates.mean() - target.item()) < 4 * stderr, (estimates.mean(), target, stderr)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_and_direct_gradients_agree(divergence: str) -> None:
    """Gradients for parameters, the input and a grad-requiring condition, through the log-det
    and both RNODE states; Hutchinson probes are re-drawn from the same seed for both runs."""
    field = random_field(channels=2, cond_channels=1, seed=3)
    x0 = torch.randn(2, 2, 3, 3, dtype=F64)
    c0 = torch.randn(2, 1, 3, 3, dtype=F64)
    grads = []
    for adjoint in (False, True):
        cnf = CNF(field, 0.8, divergence=divergence, solver=TIGHT, adjoint=adjoint, kinetic_weight=0.3,
                  jacobian_weight=0.2).double().train()  # fmt: skip
        x, cond = x0.clone().requires_grad_(), c0.clone().requires_grad_()
        field.zero_grad()
        torch.manual_seed(11)
        z, logdet = cnf(x, cond)
        loss = (z**2).sum() - logdet.sum() + cnf.regularization_loss()
        loss.backward()
        grads.append([x.grad, cond.grad, *(p.grad.clone() for p in field.parameters())])
        if adjoint:
            assert cnf.total_nfe > cnf.last_nfe, "the adjoint backward pass evaluates the field too"
    for direct, adj in zip(*grads, strict=True):
        assert direct.abs().max() > 0
        torch.testing.assert_close(adj, direct, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- regularizers, STEER, NFE


def test_rnode_regularizers_closed_form() -> None:
    """Constant field c: kinetic = T c^2 / 2. Linear field A (exact trace): jacobian = T ||A||_F^2 / D."""
    cnf = CNF(ConstantField(0.7), 2.0, divergence="exact", solver=rk4(0.5), kinetic_weight=0.1, jacobian_weight=0.3)
    cnf = cnf.double()
    _, _ = cnf(torch.randn(3, 1, 2, 2, dtype=F64))
    torch.testing.assert_close(cnf.last_regularizers["kinetic"], torch.full((3,), 2.0 * 0.49 / 2, dtype=F64))
    a = linear_matrix(4, seed=4)
    lin = CNF(LinearField(a), 2.0, divergence="exact", solver=rk4(0.5), kinetic_weight=0.1, jacobian_weight=0.3)
    lin = lin.double()
    lin(torch.randn(3, 1, 2, 2, dtype=F64))
    jac = lin.last_regularizers["jacobian"]
    torch.testing.assert_close(jac, torch.full((3,), 2.0 * a.pow(2).sum().item() / 4, dtype=F64))
    expected = 0.1 * lin.last_regularizers["kinetic"].mean() + 0.3 * jac.mean()
    torch.testing.assert_close(lin.regularization_loss(), expected)
    assert lin.regularization_weights == {"kinetic": 0.1, "jacobian": 0.3}
    plain = CNF(LinearField(a), 1.0, divergence="exact", solver=rk4(0.5)).double()
    plain(torch.randn(1, 1, 2, 2, dtype=F64))
    assert plain.last_regularizers == {} and plain.regularization_loss() == 0.0


def test_steer_samples_the_end_time_in_training_only() -> None:
    cnf = CNF(ConstantField(1.0), 1.0, steer=0.4, solver=rk4(0.05), divergence="exact").double()
    x = torch.zeros(2, 1, 2, 2, dtype=F64)
    ends = []
    for _ in range(20):
        z, _ = cnf(x)
        ends.append(z[0, 0, 0, 0].item())
    assert all(0.6 - 1e-9 <= e <= 1.4 + 1e-9 for e in ends)
    assert max(ends) - min(ends) > 0.1
    z_eval, _ = cnf.eval()(x)
    torch.testing.assert_close(z_eval, torch.ones_like(x))
    with pytest.raises(ValueError, match="steer"):
        CNF(ConstantField(1.0), 1.0, steer=1.0)


def test_nfe_counts_per_solve_and_cumulative() -> None:
    solver = ODESolverConfig(train=SolverSettings("rk4", step_size=0.5), eval=SolverSettings("rk4", step_size=0.25))
    cnf = CNF(random_field(), 1.0, divergence="exact", solver=solver, adjoint=False).double()
    x = torch.randn(2, 2, 2, 2, dtype=F64)
    cnf.train()(x)
    assert cnf.last_nfe == 2 * 4  # two RK4 steps of four evaluations
    cnf.eval()(x)
    assert cnf.last_nfe == 4 * 4
    cnf.inverse(x)
    assert cnf.last_nfe == 16 and cnf.total_nfe == 8 + 16 + 16
    cnf.reset_nfe()
    assert cnf.total_nfe == 0 and cnf.last_nfe == 0


def test_skip_logdets_keeps_the_state_and_zeroes_the_logdet() -> None:
    cnf = CNF(random_field(), 1.0, solver=rk4(0.25), divergence="exact").double()
    x = torch.randn(2, 2, 2, 2, dtype=F64)
    z, logdet = cnf(x)
    with skip_logdets(cnf):
        z_fast, zero = cnf(x)
    assert cnf.compute_logdet
    torch.testing.assert_close(z_fast, z, atol=0, rtol=0)
    assert logdet.abs().min() > 0 and torch.equal(zero, torch.zeros_like(zero))


def test_bf16_vector_field_keeps_float32_state_and_logdet() -> None:
    field = random_field().float()
    cnf = CNF(field, 1.0, solver=rk4(0.25), divergence="exact").eval()
    x = torch.randn(2, 2, 3, 3)
    z, logdet = cnf(x)
    with subnet_precision("bf16-mixed"):
        z_bf, logdet_bf = cnf(x)
    assert z_bf.dtype == torch.float32 and logdet_bf.dtype == torch.float32
    torch.testing.assert_close(z_bf, z, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(logdet_bf, logdet, atol=2e-1, rtol=5e-2)


# ---------------------------------------------------------------- solver settings and failures


def test_solver_settings_validate_and_reject_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown ODE solver setting"):
        SolverSettings.from_dict({"method": "dopri5", "tol": 1e-3})
    with pytest.raises(ConfigError, match="unknown ODE solver mode"):
        ODESolverConfig.from_dict({"training": {}})
    with pytest.raises(ConfigError, match="step_size"):
        SolverSettings("rk4")
    with pytest.raises(ConfigError, match="rk4"):
        SolverSettings("dopri5", step_size=0.1)
    with pytest.raises(ConfigError, match="unknown ODE method"):
        SolverSettings("dopri6")
    cfg = ODESolverConfig.from_dict({"eval": {"method": "rk4", "step_size": 0.1}})
    assert cfg.select(training=False).method == "rk4" and cfg.select(training=True).method == "dopri5"
    with pytest.raises(Exception, match="frozen|cannot assign"):
        cfg.train.rtol = 1.0


@pytest.mark.parametrize(
    "solver",
    [SolverSettings("dopri5", rtol=1e-6, atol=1e-6), SolverSettings("rk4", step_size=0.1)],
    ids=["dopri5-underflow", "rk4-non-finite"],
)
def test_solver_failure_raises_a_clear_error(solver: SolverSettings) -> None:
    cnf = CNF(BlowUpField(), 1.0, divergence="exact", solver=ODESolverConfig.both(solver), name="level 2 block 0")
    x = torch.full((2, 1, 2, 2), 1.0)
    with pytest.raises(SolverError) as info:
        cnf(x)
    message = str(info.value)
    assert isinstance(info.value, MsflowError)
    assert "level 2 block 0" in message
    assert "rk4" in message and "step_size" in message
    assert solver.method in message


class ArmedField(nn.Module):
    """``x' = w x`` until armed, then ``-1000 x^3 |x|``: the adjoint's backward solve (which
    re-evaluates the field) blows up although the forward solve was fine."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.1))
        self.armed = False

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return -1000 * x.pow(3) * x.abs() if self.armed else self.w * x


def test_a_failed_adjoint_backward_solve_names_the_block() -> None:
    field = ArmedField()
    settings = SolverSettings("dopri5", rtol=1e-6, atol=1e-6)
    cnf = CNF(field, divergence="exact", solver=ODESolverConfig.both(settings), name="level 1 block 2").train()
    z, logdet = cnf(torch.full((2, 1, 2, 2), 1.0))
    field.armed = True
    with pytest.raises(SolverError) as info, solver_errors_in_backward():
        (z.sum() + logdet.sum()).backward()
    message = str(info.value)
    assert "level 1 block 2" in message and "adjoint's backward solve" in message
    assert "underflow in dt" in message and "rk4" in message
    # Outside any solve, an AssertionError is left alone.
    with pytest.raises(AssertionError, match="not a solver"), solver_errors_in_backward():
        raise AssertionError("not a solver")


def test_conditional_cnf_needs_cond() -> None:
    cnf = CNF(conv_vector_field(hidden=4, layers=1)(2, 1))
    with pytest.raises(ValueError, match="cond"):
        cnf(torch.randn(1, 2, 2, 2))


def test_vector_field_uses_time_and_starts_at_zero() -> None:
    fresh = ConvVectorField(2, hidden=(4,))
    assert fresh(torch.tensor(0.3), torch.randn(1, 2, 3, 3)).abs().max() == 0
    field = random_field()
    x = torch.randn(1, 2, 3, 3, dtype=F64)
    assert (field(torch.tensor(0.0), x) - field(torch.tensor(1.0), x)).abs().max() > 1e-3


@pytest.mark.parametrize("adjoint", [False, True])
def test_grad_requiring_input_gives_the_same_solve(adjoint: bool) -> None:
    """Regression: under no_grad (and in the adjoint's forward pass) the first state is a view
    of a grad-requiring input; its trace must still be computed (it came out 0 once)."""
    cnf = CNF(random_field(seed=5), 1.0, solver=TIGHT, divergence="exact", adjoint=adjoint).double()
    x = torch.randn(2, 2, 3, 3, dtype=F64)
    with torch.no_grad():
        z_ref, ld_ref = cnf(x)
    nfe = cnf.last_nfe
    for context in (torch.no_grad(), torch.enable_grad()):
        with context:
            z, ld = cnf(x.clone().requires_grad_())
        torch.testing.assert_close(ld.detach(), ld_ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(z.detach(), z_ref, atol=1e-12, rtol=0)
        assert cnf.last_nfe == nfe


def test_gradient_checkpointing_skips_cnf_blocks_and_keeps_loss_and_gradients() -> None:
    """A CNF's trace calls autograd at every evaluation: checkpointing it would re-run the solve
    up to each call (n(n+1)/2 evaluations); it is left out, so the counts stay those without."""
    from msflow import create_model
    from msflow.core import set_gradient_checkpointing

    solver = {"train": {"method": "rk4", "step_size": 0.5}, "eval": {"method": "rk4", "step_size": 0.5}}
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    runs = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = create_model("mrcnf-mnist", image_shape=(1, 8, 8), resolutions=2, steps=1, hidden=8, solver=solver)
        set_gradient_checkpointing(model, enabled)
        loss = model.bits_per_dim(x, generator=torch.Generator().manual_seed(1)).mean()
        loss.backward()
        nfe = [m.total_nfe for m in model.modules() if isinstance(m, CNF)]
        runs.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None], nfe))
    (loss_a, grads_a, nfe_a), (loss_b, grads_b, nfe_b) = runs
    assert nfe_a == nfe_b and all(n > 0 for n in nfe_a)
    torch.testing.assert_close(loss_a, loss_b, atol=0, rtol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
