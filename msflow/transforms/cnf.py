r"""Continuous normalizing flow block (FFJORD, RNODE; MRCNF eq. 2-4, 15 and 17).

A :class:`CNF` integrates the state and its log-det jointly from ``t = 0`` (data) to ``t = T``
(latent):

.. math::

    \frac{d}{dt}\begin{bmatrix} x \\ \ell \\ k \\ j \end{bmatrix} =
    \begin{bmatrix} f(x, t \mid c) \\ \operatorname{tr} \partial f / \partial x \\
    \tfrac12 \operatorname{mean}(f^2) \\ \operatorname{mean}((\epsilon^\top \partial f/\partial x)^2)
    \end{bmatrix}, \qquad \log\left|\det \frac{\partial z}{\partial x}\right| = \ell(T)

(eq. 3 with the sign of this library's contract: ``forward`` returns ``+\int tr``). ``k`` and
``j`` are RNODE's kinetic-energy and Jacobian-norm regularizers (eq. 15); they are integrated
only when their weights are positive, with tolerance 1e20 so that they never shrink the step.

The trace is exact (one vector-Jacobian product per dimension: tests and tiny inputs) or
Hutchinson's ``\epsilon^\top J \epsilon`` with one probe ``\epsilon`` drawn per solve and
reused at every evaluation (re-drawing it inside a solve makes the dynamics noisy and the NFE
explode, torchdiffeq issue 120). In training the probe comes from the global RNG; in
evaluation from a generator seeded with ``probe_seed``, so ``log p`` is a deterministic function
of the input (reproducible evaluation; ``encode`` and ``log_prob`` agree).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from msflow.core import InvertibleModule, require_cond
from msflow.nn.subnets import run_subnet
from msflow.transforms.ode_solver import ODESolverConfig, as_solver_config, odesolve

Divergence = Callable[[Tensor, Tensor, Tensor | None, bool], tuple[Tensor, Tensor]]
"""``div(dx, x, probe, create_graph) -> (trace of df/dx, squared Jacobian norm per dim)``, each (B,)."""


def exact_divergence(dx: Tensor, x: Tensor, probe: Tensor | None, create_graph: bool) -> tuple[Tensor, Tensor]:
    r"""Exact ``tr(J)`` and ``||J||_F^2 / D`` from one vector-Jacobian product per dimension (``probe`` unused).

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, requires_grad=True)
        >>> div, _ = exact_divergence(x * torch.tensor([1.0, 2.0, 3.0]), x, None, False)
        >>> div.tolist()
        [6.0, 6.0]
    """
    flat = dx.reshape(dx.shape[0], -1)
    trace, frobenius = flat.new_zeros(flat.shape[0]), flat.new_zeros(flat.shape[0])
    for i in range(flat.shape[1]):
        # Samples are independent, so the gradient of the batch sum gives row i of every J.
        (row,) = torch.autograd.grad(
            flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph, materialize_grads=True
        )
        row = row.reshape(flat.shape[0], -1)
        trace = trace + row[:, i]
        frobenius = frobenius + row.pow(2).sum(1)
    return trace, frobenius / flat.shape[1]


def hutchinson_divergence(dx: Tensor, x: Tensor, probe: Tensor | None, create_graph: bool) -> tuple[Tensor, Tensor]:
    r"""Hutchinson's ``\epsilon^\top J \epsilon`` and ``mean((\epsilon^\top J)^2)`` from one vector-Jacobian product.

    Unbiased for ``tr(J)`` and ``||J||_F^2 / D`` when ``E[\epsilon \epsilon^\top] = I``.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 3, requires_grad=True)
        >>> div, _ = hutchinson_divergence(2 * x, x, torch.ones(1, 3), False)
        >>> div.tolist()
        [6.0]
    """
    # Only a graph that is differentiated again (create_graph) must outlive this product; freeing
    # the field's saved activations as it runs lowers evaluation's peak memory.
    (e_jac,) = torch.autograd.grad(
        dx, x, probe, retain_graph=create_graph, create_graph=create_graph, materialize_grads=True
    )
    return (e_jac * probe).flatten(1).sum(1), e_jac.pow(2).flatten(1).mean(1)


def gaussian_probe(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, I)`` probe shaped like ``x`` (RNODE, MRCNF)."""
    where = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=where, dtype=x.dtype).to(x.device)


def rademacher_probe(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform ``{-1, +1}`` probe shaped like ``x`` (FFJORD; lower variance than Gaussian)."""
    where = generator.device if generator is not None else x.device
    bits = torch.randint(0, 2, x.shape, generator=generator, device=where)
    return (bits * 2 - 1).to(x.device, x.dtype)


DIVERGENCES: dict[str, Divergence] = {"exact": exact_divergence, "hutchinson": hutchinson_divergence}
PROBES: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "gaussian": gaussian_probe,
    "rademacher": rademacher_probe,
}


class _Counter:
    """Function evaluations, shared by a block and the dynamics of each of its solves."""

    def __init__(self) -> None:
        self.count = 0


class _Dynamics:
    """The augmented dynamics of one solve; a fresh object per solve, so that an adjoint backward
    pass run later still sees the condition and probe of its own forward pass."""

    def __init__(
        self, field: nn.Module, cond: Tensor | None, divergence: Divergence | None, probe: Tensor | None,
        regularize: bool, counter: _Counter,
    ) -> None:  # fmt: skip
        self.field, self.cond, self.divergence, self.probe = field, cond, divergence, probe
        self.regularize, self.counter = regularize, counter

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.counter.count += 1
        x = state[0]
        # Gradients of the divergence itself are needed when the caller back-propagates (direct
        # mode) or when this is the adjoint's backward pass; both run with grad enabled.
        create_graph = torch.is_grad_enabled()
        # Sampling (no log-det, no outer graph) needs no graph at all.
        with torch.set_grad_enabled(create_graph or self.divergence is not None):
            # Without an outer graph (no_grad, or the adjoint's forward pass) a state that merely
            # views a grad-requiring input is no node of the graph built here; a fresh leaf is.
            if not (create_graph and x.requires_grad):
                x = x.detach().requires_grad_(self.divergence is not None)
            dx = run_subnet(lambda h: self.field(t, h, self.cond), x)
            derivatives = [dx]
            if self.divergence is not None:
                trace, jac_norm = self.divergence(dx, x, self.probe, create_graph)
                derivatives.append(trace)
                if self.regularize:
                    derivatives += [0.5 * dx.pow(2).flatten(1).mean(1), jac_norm]
        if not create_graph:
            derivatives = [d.detach() for d in derivatives]
        return tuple(derivatives)


class CNF(InvertibleModule):
    r"""A continuous normalizing flow ``z = x + \int_0^T f(x(t), t \mid c) dt`` with its exact log-det.

    Args:
        field: the vector field ``field(t, x, cond) -> dx/dt`` (e.g.
            :class:`~msflow.nn.odefunc.ConvVectorField`); a field with ``cond_channels > 0``
            makes the block conditional.
        end_time: the integration time ``T`` (MRCNF: 1).
        divergence: ``"hutchinson"`` (one vector-Jacobian product per evaluation) or ``"exact"``
            (one per dimension: for tests and tiny inputs).
        probe: Hutchinson probe, ``"gaussian"`` or ``"rademacher"``.
        solver: an :class:`~msflow.transforms.ode_solver.ODESolverConfig` or its dict form;
            ``module.training`` picks the train or eval settings.
        adjoint: back-propagate with the adjoint method (memory independent of the number of
            steps; gradients for the field's parameters and a grad-requiring ``cond``) instead of
            through the solver's operations.
        kinetic_weight: RNODE weight of ``\int \frac12 \operatorname{mean}(f^2) dt``.
        jacobian_weight: RNODE weight of ``\int \operatorname{mean}((\epsilon^\top J)^2) dt``.
        steer: STEER's ``b`` (eq. 17): in training the end time is drawn from ``U[T - b, T + b]``.
        probe_seed: seed of the probes drawn in evaluation mode.
        name: how errors refer to this block (containers set e.g. ``"level 1 block 3"``).

    After a ``forward`` call, ``last_regularizers`` maps ``"kinetic"`` / ``"jacobian"`` to ``(B,)``
    values (empty when both weights are 0), ``regularization_loss()`` is their weighted batch
    mean, ``last_nfe`` counts the function evaluations of the last solve and ``total_nfe`` all of
    them (adjoint backward passes included).

    Example:
        >>> import torch
        >>> from msflow.nn.odefunc import ConvVectorField
        >>> cnf = CNF(ConvVectorField(2, hidden=(8,)), divergence="exact").eval()
        >>> x = torch.randn(3, 2, 4, 4)
        >>> z, logdet = cnf(x)  # the zero-initialised field starts as the identity
        >>> bool(torch.allclose(z, x)), logdet.tolist(), cnf.last_nfe > 0
        (True, [0.0, 0.0, 0.0], True)
    """

    recomputable = False
    """Gradient checkpointing skips CNF blocks: their forward calls ``torch.autograd.grad`` (the
    trace) at every function evaluation, and torch's non-reentrant checkpoint answers each call by
    re-running the block up to it, n (n + 1) / 2 evaluations per solve; with adjoint gradients a
    solve's memory does not grow with its steps anyway."""

    def __init__(
        self,
        field: nn.Module,
        end_time: float = 1.0,
        *,
        divergence: str = "hutchinson",
        probe: str = "gaussian",
        solver: ODESolverConfig | Mapping[str, Any] | None = None,
        adjoint: bool = True,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        steer: float = 0.0,
        probe_seed: int = 0,
        name: str = "CNF",
    ) -> None:
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {sorted(DIVERGENCES)}")
        if probe not in PROBES:
            raise ValueError(f"unknown Hutchinson probe {probe!r}; choose one of {sorted(PROBES)}")
        if not end_time > 0 or not 0 <= steer < end_time:
            raise ValueError(f"need end_time > 0 and 0 <= steer < end_time, got {end_time} and steer={steer}")
        if kinetic_weight < 0 or jacobian_weight < 0:
            raise ValueError("RNODE regularizer weights must be non-negative")
        self.field = field
        self.end_time, self.steer = float(end_time), float(steer)
        self.divergence, self.probe = divergence, probe
        self.solver = as_solver_config(solver)
        self.adjoint = adjoint
        self.kinetic_weight, self.jacobian_weight = float(kinetic_weight), float(jacobian_weight)
        self.probe_seed, self.name = probe_seed, name
        self.conditional = getattr(field, "cond_channels", 0) > 0
        self.compute_logdet = True
        self.last_regularizers: dict[str, Tensor] = {}
        self.last_nfe = 0
        self._counter = _Counter()

    @property
    def total_nfe(self) -> int:
        """Function evaluations since construction or :meth:`reset_nfe` (adjoint backward included)."""
        return self._counter.count

    def reset_nfe(self) -> None:
        """Zero the evaluation counters."""
        self._counter.count, self.last_nfe = 0, 0

    @property
    def regularization_weights(self) -> dict[str, float]:
        """RNODE weights by regularizer name."""
        return {"kinetic": self.kinetic_weight, "jacobian": self.jacobian_weight}

    def regularization_loss(self) -> Tensor | float:
        """``sum_k w_k mean_batch(r_k)`` of the last ``forward`` call (0 when not regularized)."""
        weights = self.regularization_weights
        return sum((weights[k] * v.mean() for k, v in self.last_regularizers.items()), 0.0)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        end = self.end_time
        if self.training and self.steer > 0:
            end = self.end_time + self.steer * (2.0 * float(torch.rand(())) - 1.0)
        regularize = self.kinetic_weight > 0 or self.jacobian_weight > 0
        z, logdet, regs = self._integrate(x, cond, 0.0, end, regularize)
        self.last_regularizers = dict(zip(("kinetic", "jacobian"), regs, strict=False))
        return z, logdet

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x, logdet, _ = self._integrate(z, cond, self.end_time, 0.0, regularize=False)
        return x, logdet

    def _integrate(
        self, x: Tensor, cond: Any, t0: float, t1: float, regularize: bool
    ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        cond = require_cond(self, cond) if self.conditional else None
        regularize = regularize and self.compute_logdet
        probe = None
        if self.compute_logdet and self.divergence == "hutchinson":
            gen = None if self.training else torch.Generator(device=x.device).manual_seed(self.probe_seed)
            probe = PROBES[self.probe](x, gen)
        divergence = DIVERGENCES[self.divergence] if self.compute_logdet else None
        dynamics = _Dynamics(self.field, cond, divergence, probe, regularize, self._counter)
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros, zeros, zeros)[: 1 + self.compute_logdet + 2 * regularize]
        t = torch.tensor([t0, t1], dtype=torch.float64, device=x.device)
        adjoint_params = None
        if self.adjoint and torch.is_grad_enabled():
            adjoint_params = [p for p in self.field.parameters() if p.requires_grad]
            if isinstance(cond, Tensor) and cond.requires_grad:
                adjoint_params.append(cond)
        before = self._counter.count
        out = odesolve(
            dynamics,
            state,
            t,
            self.solver.select(self.training),
            name=self.name,
            adjoint_params=adjoint_params,
            untracked=2 if regularize else 0,
        )
        self.last_nfe = self._counter.count - before
        logdet = out[1] if self.compute_logdet else zeros
        return out[0], logdet, out[2:]

    def extra_repr(self) -> str:
        return (
            f"end_time={self.end_time}, divergence={self.divergence!r}, adjoint={self.adjoint}, "
            f"train={self.solver.train.describe()}, eval={self.solver.eval.describe()}"
        )


def cnf_blocks(module: nn.Module) -> list[CNF]:
    """Every :class:`CNF` inside ``module``."""
    return [m for m in module.modules() if isinstance(m, CNF)]


def compile_fields(module: nn.Module, **options: Any) -> int:
    """Compile the vector field of every :class:`CNF` in ``module`` with ``torch.compile``, in place.

    Opt-in (nothing compiles by default): the solver, the divergence and the log-det arithmetic stay
    eager; only the field, which the solver calls at every evaluation, becomes an inductor graph.
    ``benchmarks/compiled.py`` measured ``cnf_peers.py``'s MRCNF level on a 2-core CPU at low load
    (``docs/results/compile-cpu-lowload.json``): training 1.25x and sampling 1.3x faster, but
    evaluation 0.85x (slower), with the loss identical and bits/dim within 1e-6 (inductor reorders
    sums); so compile for training or sampling runs, not for evaluation. The first call of each
    shape pays the compilation (seconds to tens of seconds on a CPU). Known limit: at the tiny size
    of ``compiled.py --smoke`` training failed with torch's "donated buffers" error (a backward
    with ``create_graph=True`` through the compiled field); ``torch._functorch.config.donated_buffer
    = False`` is torch's switch for it. ``options`` go to
    ``nn.Module.compile``. Returns the
    number of fields compiled.

    Example:
        >>> from msflow.nn.odefunc import ConvVectorField
        >>> compile_fields(CNF(ConvVectorField(1, hidden=(4,))))
        1
    """
    blocks = cnf_blocks(module)
    for block in blocks:
        block.field.compile(**options)
    return len(blocks)


@contextlib.contextmanager
def skip_logdets(module: nn.Module) -> Iterator[None]:
    """Within the block, the CNFs in ``module`` integrate the state only and report a zero log-det.

    Sampling needs no log-det; skipping the divergence makes each evaluation 2-3x cheaper.

    Example:
        >>> from msflow.nn.odefunc import ConvVectorField
        >>> cnf = CNF(ConvVectorField(1, hidden=(4,)))
        >>> with skip_logdets(cnf):
        ...     cnf.compute_logdet
        False
    """
    blocks = cnf_blocks(module)
    previous = [b.compute_logdet for b in blocks]
    for b in blocks:
        b.compute_logdet = False
    try:
        yield
    finally:
        for b, p in zip(blocks, previous, strict=True):
            b.compute_logdet = p


__all__ = [
    "CNF",
    "DIVERGENCES",
    "PROBES",
    "cnf_blocks",
    "exact_divergence",
    "gaussian_probe",
    "hutchinson_divergence",
    "rademacher_probe",
    "skip_logdets",
]
