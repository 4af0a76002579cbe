r"""Peer benchmark: msflow's CNF block against a plain torchdiffeq FFJORD of the same size.

One command times four phases of both and prints throughput ratios (msflow / ffjord; above 1
means msflow is faster), the function evaluations (NFE) of every phase and peak-memory ratios:

- ``train``: ``log p(v)``, bits/dim, backward (adjoint by default), Adam step (images/s;
  NFE of the forward solve and of the backward solve);
- ``eval``: bits/dim with no gradients for the parameters (images/s, NFE);
- ``sample``: integrate ``N(0, I)`` noise from ``t = T`` back to 0 (images/s, NFE);
- ``train_rnode``: ``train`` with RNODE's regularizers (MRCNF's training objective): loss
  ``bits/dim + w (kinetic + jacobian)``, ``w = 0.01`` (``rnode_weight``), on a second pair of
  models built alike (the same initial weights).

**msflow** is one level of MRCNF built with msflow's own API (``cnf_density``: a
:class:`~msflow.transforms.CNF` with a :class:`~msflow.nn.odefunc.ConvVectorField`, Hutchinson
trace with a Gaussian probe, adjoint gradients, MRCNF's solver settings). **ffjord** is what a
user would otherwise write: :class:`FFJORDField` (the same convolutions, widths, softplus and
time channel) driven by :class:`FFJORD`, a Hutchinson divergence from one vector-Jacobian
product and ``torchdiffeq.odeint_adjoint``. Both start from the *same weights* (msflow's field,
its zero-initialised last convolution re-drawn with PyTorch's default init so that the dynamics
are not trivially zero, copied into the peer), see the same dequantized images, the same
sampling noise and, step for step, the same Hutchinson probes. So they compute the same numbers
up to float rounding, which the report checks (``check``), and the same NFE: what the ratios
measure is the cost of each implementation around the same solves.

In ``train_rnode`` msflow's block is built with ``kinetic_weight = jacobian_weight = 0.01`` and
its loss is ``bits/dim + cnf.regularization_loss()``. The peer adds the two states to its own ODE
(:class:`_Divergence` with ``regularize``): ``d/dt kinetic = mean(f^2) / 2`` and ``d/dt jacobian =
mean((eps^T J)^2)`` per image, the latter from the vector-Jacobian product the trace already
computes; the one-line setting an RNODE user gives torchdiffeq, per-state tolerances of 1e20 for
the two states so that they never shrink the step (and scalar tolerances for the adjoint's
backward solve, whose state is another tuple); loss ``bits/dim + 0.01 (mean(kinetic) +
mean(jacobian))``. The peer runs every setting that leaves the numbers alone at its cheapest
(no double-backward graph where nothing differentiates the divergence, the parameters found by
``odeint_adjoint`` once per solve); a setting that changes them is left out of both, e.g.
``adjoint_options={"norm": "seminorm"}``, which would cut the backward NFE. What still differs:

- msflow passes the two time points in float64, the peer in float32; torchdiffeq's adaptive
  solvers keep time in float64 and hand the field float32 times either way, so the solves come
  out the same;
- msflow computes the Jacobian-norm term ``mean((eps^T J)^2)`` at every evaluation and drops it
  when RNODE is off (the ``train``, ``eval`` phases: one square and mean per evaluation);
- in the adjoint's forward solve msflow computes the kinetic term with autograd recording (then
  detaches it), the peer without: a few graph nodes per evaluation;
- around each solve msflow translates solver failures (a wrapper on the adjoint's dynamics),
  checks that the final state is finite (one host-device synchronisation per state on CUDA) and
  applies its subnet-precision hook (``run_subnet``); the peer does none of that;
- msflow weights each term (``0.01 k + 0.01 j``), the peer their sum (``0.01 (k + j)``): the same
  gradients.

How it measures (as ``peers.py``; see benchmarks/README.md):

- Timing runs both contestants in one process, **interleaved**: each repeat times ``iters``
  steps of each, alternating which goes first; warm-up steps are excluded; the medians over
  repeats are reported. On CUDA the device is synchronized before every timer read.
- Peak memory: on the CPU in a **fresh subprocess per (contestant, phase)** (``_memory.py``:
  one small-batch step first, then the peak RSS of ``memory_iters`` full-batch steps over the
  RSS before them; median of ``memory_repeats`` processes); on CUDA in-process,
  ``torch.cuda.max_memory_allocated`` over the allocation before the steps.

Usage::

    python benchmarks/cnf_peers.py --quick --json quick.json   # about 2 minutes on 2 busy cores
    python benchmarks/cnf_peers.py --json cnf_peers.json       # full run: under 15 minutes
    python benchmarks/cnf_peers.py --device cuda               # on a GPU
    python benchmarks/cnf_peers.py --smoke --no-memory         # tiny, seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchdiffeq
from _memory import cpu_name, measure_cuda_peak, measure_peak, median_of_processes, worker_command
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

import msflow
from msflow.distributions import standard_normal_log_prob
from msflow.metrics.bpd import bits_per_dim
from msflow.models.mrcnf import DEFAULT_SOLVER, cnf_density
from msflow.transforms.cnf import CNF, cnf_blocks, skip_logdets
from msflow.transforms.ode_solver import SolverSettings

PHASES = ("train", "eval", "sample", "train_rnode")
BASELINE = "ffjord"
FFJORD_SOLVER = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}
SOLVERS: dict[str, dict[str, dict[str, Any]]] = {
    "mrcnf": DEFAULT_SOLVER,  # msflow's MRCNF default: bosh3 at 1e-3 to train, dopri5 at 1e-5 to evaluate
    "ffjord": {"train": FFJORD_SOLVER, "eval": FFJORD_SOLVER},  # FFJORD's train_cnf.py defaults
}


@dataclass(frozen=True)
class BenchConfig:
    """Architecture, workload, solver and repetition counts of one benchmark run."""

    # The top level of configs/mnist5k-mrcnf.yaml (2 resolutions): 14x14 MNIST, unconditional.
    image_shape: tuple[int, int, int] = (1, 14, 14)
    hidden: int = 64  # the MRCNF preset's field: 3 hidden layers of 64 channels (4 convolutions)
    layers: int = 3
    end_time: float = 1.0
    batch: int = 16
    solver: str = "mrcnf"  # both contestants use these settings, per phase (SOLVERS)
    gradients: str = "adjoint"  # or "direct" (back-propagation through the solver), both contestants
    device: str = "cpu"
    threads: int = 2
    data: str = "mnist14"  # MNIST-5k train images averaged over 2x2 blocks, or "random" uint8 noise
    num_batches: int = 2  # distinct batches cycled through by every phase
    warmup: int = 1  # untimed steps per (contestant, phase)
    repeats: int = 7  # timed repeats; the median is reported
    iters: int = 1  # steps per timed repeat
    memory_iters: int = 1  # full-batch steps run while measuring peak memory
    memory_repeats: int = 3  # fresh processes per (contestant, phase) on the CPU; the median is reported
    check_batch: int = 4  # images of the gradient and sampling equivalence checks
    lr: float = 1e-3
    rnode_weight: float = 0.01  # train_rnode: MRCNF's kinetic and Jacobian-norm weights (cnf_density's defaults)
    seed: int = 0


PRESETS: dict[str, BenchConfig] = {
    "full": BenchConfig(),
    "quick": BenchConfig(repeats=2, memory_repeats=1),
    # Tiny field and data for tests: every code path in seconds. One thread, because two OpenMP
    # threads on a busy machine can make tiny ops ~100x slower (spinning barriers).
    "smoke": BenchConfig(
        image_shape=(1, 6, 6),
        hidden=8,
        layers=2,
        batch=3,
        threads=1,
        data="random",
        warmup=0,
        repeats=1,
        memory_repeats=1,
        check_batch=2,
    ),
}


# --------------------------------------------------------------------------- data


def make_batches(cfg: BenchConfig) -> list[Tensor]:
    """``num_batches`` seeded uint8 batches of ``cfg.image_shape``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.num_batches * cfg.batch
    if cfg.data == "mnist14":
        from msflow.data import get_dataset

        try:
            images = get_dataset("mnist5k", "train", downsample=2).images
        except ImportError as err:
            raise SystemExit(f"{err}; install msflow[data] or pass --data random") from None
        if tuple(images.shape[1:]) != cfg.image_shape:
            raise ValueError(f"mnist14 images are {tuple(images.shape[1:])}, not {cfg.image_shape}; use data='random'")
        images = images[torch.randperm(images.shape[0], generator=gen)[:n]]
    elif cfg.data == "random":
        images = torch.randint(0, 256, (n, *cfg.image_shape), generator=gen, dtype=torch.uint8)
    else:
        raise ValueError(f"unknown data {cfg.data!r}; use 'mnist14' or 'random'")
    return list(images.split(cfg.batch))


@dataclass
class Inputs:
    """What every contestant is fed, identical for both: dequantized images and sampling noise."""

    v: list[Tensor]  # v = (x + u) / 256 - 1/2, u ~ U[0, 1), one draw per batch
    eps: list[Tensor]  # N(0, I) noise to integrate back to images

    @classmethod
    def from_batches(cls, batches: list[Tensor], seed: int, device: str) -> Inputs:
        gen = torch.Generator().manual_seed(seed + 1)
        v = [((x.float() + torch.rand(x.shape, generator=gen)) / 256.0 - 0.5).to(device) for x in batches]
        eps = [torch.randn(x.shape, generator=gen).to(device) for x in batches]
        return cls(v, eps)

    def __len__(self) -> int:
        return len(self.v)


# --------------------------------------------------------------------------- the peer


class ConcatConv2d(nn.Module):
    """A 3x3 convolution of ``[t, x]``: the time is one more, constant, input channel (FFJORD's "concat" layer)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 3, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.conv(torch.cat([torch.ones_like(x[:, :1]) * t, x], dim=1))


class FFJORDField(nn.Module):
    """FFJORD's image ODE net without its multi-scale wrapper: concat convs, softplus between them."""

    def __init__(self, channels: int, hidden: int, layers: int) -> None:
        super().__init__()
        widths = [channels, *([hidden] * layers), channels]
        self.layers = nn.ModuleList(ConcatConv2d(a, b) for a, b in zip(widths, widths[1:], strict=False))

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = F.softplus(layer(t, x))
        return self.layers[-1](t, x)


class _Divergence(nn.Module):
    r"""``d/dt (x, logdet) = (f, eps^T (df/dx) eps)``: the ODE an FFJORD user hands torchdiffeq.

    With ``regularize``, RNODE's two states follow, as an RNODE user adds them to the same ODE:
    ``d/dt kinetic = mean(f^2) / 2`` and ``d/dt jacobian = mean((eps^T df/dx)^2)`` per image, the
    latter from the vector-Jacobian product the trace already needs.

    An ``nn.Module``, so that ``odeint_adjoint`` finds the field's parameters by itself.
    """

    def __init__(self, field: nn.Module, regularize: bool = False) -> None:
        super().__init__()
        self.field, self.regularize = field, regularize
        self.probe: Tensor | None = None
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        # The divergence must be differentiable exactly when someone back-propagates through
        # it: direct back-propagation, or the adjoint's backward solve (both run with grad on).
        # Evaluation and the adjoint's forward solve skip the double-backward graph.
        need_graph = torch.is_grad_enabled()
        x = state[0]
        with torch.enable_grad():
            if not (need_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            dx = self.field(t, x)
            (e_jac,) = torch.autograd.grad(dx, x, self.probe, create_graph=need_graph)
        out = (dx, (e_jac * self.probe).flatten(1).sum(1))
        if self.regularize:
            out += (0.5 * dx.pow(2).flatten(1).mean(1), e_jac.pow(2).flatten(1).mean(1))
        return out if need_graph else tuple(d.detach() for d in out)


class _Field(nn.Module):
    """``dx/dt = f`` alone: sampling needs no log-det."""

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.nfe = 0

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        self.nfe += 1
        return self.field(t, x)


class FFJORD(nn.Module):
    """A continuous flow as an FFJORD user writes it on torchdiffeq: ``log p(v)`` and sampling.

    The Hutchinson probe is Gaussian (FFJORD's default, and MRCNF's), drawn once per solve; in
    evaluation from a generator seeded with ``probe_seed`` (msflow does the same, so that
    evaluation is deterministic; it costs nothing).

    ``rnode_weight > 0`` integrates RNODE's kinetic and Jacobian-norm states along with
    ``(x, logdet)``, with tolerance 1e20 so that they never shrink the step (per-state tolerances,
    as RNODE's own code passes them; the adjoint's backward solve takes scalar tolerances, its
    state being another tuple), and :meth:`regularization_loss` is
    ``rnode_weight * (mean(kinetic) + mean(jacobian))`` of the last ``log_prob``.
    """

    def __init__(
        self,
        field: nn.Module,
        end_time: float,
        train_solver: SolverSettings,
        eval_solver: SolverSettings,
        adjoint: bool = True,
        probe_seed: int = 0,
        rnode_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.dynamics, self.sampler = _Divergence(field, regularize=rnode_weight > 0), _Field(field)
        self.end_time, self.adjoint, self.probe_seed = end_time, adjoint, probe_seed
        self.train_solver, self.eval_solver = train_solver, eval_solver
        self.rnode_weight = rnode_weight
        self.regularizers: tuple[Tensor, ...] = ()

    @property
    def nfe(self) -> int:
        return self.dynamics.nfe + self.sampler.nfe

    def _solve(self, func: nn.Module, state: Any, t0: float, t1: float, device: torch.device, free: int = 0) -> Any:
        s = self.train_solver if self.training else self.eval_solver
        t = torch.tensor([t0, t1], device=device)
        tolerances: dict[str, Any] = {"rtol": s.rtol, "atol": s.atol}
        if free:  # the last ``free`` states are integrated but do not steer the step size
            tolerances = {k: (v,) * (len(state) - free) + (1e20,) * free for k, v in tolerances.items()}
        if self.adjoint and torch.is_grad_enabled():
            return odeint_adjoint(
                func, state, t, method=s.method, adjoint_rtol=s.rtol, adjoint_atol=s.atol, **tolerances
            )
        return odeint(func, state, t, method=s.method, **tolerances)

    def log_prob(self, v: Tensor) -> Tensor:
        """``(B,)`` ``log p(v)`` in nats: ``log N(z; 0, I) + int_0^T tr(df/dx) dt``."""
        gen = None if self.training else torch.Generator(device=v.device).manual_seed(self.probe_seed)
        self.dynamics.probe = torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype)
        zeros = v.new_zeros(v.shape[0])
        free = 2 if self.dynamics.regularize else 0
        state = (v, zeros) + (zeros,) * free
        zs, logdets, *regularizers = self._solve(self.dynamics, state, 0.0, self.end_time, v.device, free)
        self.regularizers = tuple(r[-1] for r in regularizers)
        z = zs[-1]
        return -0.5 * (z * z + math.log(2 * math.pi)).flatten(1).sum(1) + logdets[-1]

    def regularization_loss(self) -> Tensor | float:
        """``rnode_weight * (mean(kinetic) + mean(jacobian))`` of the last ``log_prob`` (0 without RNODE)."""
        if not self.regularizers:
            return 0.0
        kinetic, jacobian = self.regularizers
        return self.rnode_weight * (kinetic.mean() + jacobian.mean())

    def sample(self, eps: Tensor) -> Tensor:
        """Integrate ``eps`` from ``t = T`` back to 0."""
        return self._solve(self.sampler, eps, self.end_time, 0.0, eps.device)[-1]


# --------------------------------------------------------------------------- contestants


@dataclass
class Contestant:
    """A model and the operations being timed, written with each side's own API."""

    name: str
    model: nn.Module  # train() / eval() selects the solver settings of the phase
    log_prob: Callable[[Tensor], Tensor]  # v -> (B,) log p(v), nats
    sample: Callable[[Tensor], Tensor]  # N(0, I) noise -> v
    nfe: Callable[[], int]  # evaluations of the vector field so far
    regularization: Callable[[], Tensor | float]  # RNODE's weighted terms of the last log_prob (0 without)
    lr: float = 1e-3
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_pair(cfg: BenchConfig, rnode: bool = False) -> tuple[Contestant, Contestant]:
    """msflow's MRCNF level and the FFJORD peer, with identical weights.

    ``rnode``: both regularized with RNODE's kinetic and Jacobian-norm terms, each weighted
    ``cfg.rnode_weight`` (the ``train_rnode`` phase); otherwise plain maximum likelihood, as FFJORD.
    """
    torch.manual_seed(cfg.seed)
    solver = SOLVERS[cfg.solver]
    weight = cfg.rnode_weight if rnode else 0.0
    density = cnf_density(
        steps=1,
        hidden=cfg.hidden,
        layers=cfg.layers,
        end_time=cfg.end_time,
        solver=solver,
        adjoint=cfg.gradients == "adjoint",
        kinetic_weight=weight,
        jacobian_weight=weight,
    )
    channels = cfg.image_shape[0]
    level = density(channels, 0, cfg.image_shape)
    (cnf,) = cnf_blocks(level)
    # A zero field makes every solve trivial (f = 0, the fewest steps): start both from
    # PyTorch's default init of the last convolution instead, which is FFJORD's.
    cnf.field.out.conv.reset_parameters()
    level = level.to(cfg.device)

    peer_field = FFJORDField(channels, cfg.hidden, cfg.layers).to(cfg.device)
    with torch.no_grad():
        for mine, theirs in zip(peer_field.parameters(), cnf.field.parameters(), strict=True):
            mine.copy_(theirs)
    peer = FFJORD(
        peer_field,
        cfg.end_time,
        SolverSettings(**solver["train"]),
        SolverSettings(**solver["eval"]),
        adjoint=cfg.gradients == "adjoint",
        probe_seed=cnf.probe_seed,
        rnode_weight=weight,
    )
    return _msflow_contestant(level, cnf, cfg.lr), Contestant(
        BASELINE, peer, peer.log_prob, peer.sample, lambda: peer.nfe, peer.regularization_loss, cfg.lr
    )


def _msflow_contestant(level: nn.Module, cnf: CNF, lr: float) -> Contestant:
    def log_prob(v: Tensor) -> Tensor:
        z, logdet = level(v)
        return standard_normal_log_prob(z) + logdet

    def sample(eps: Tensor) -> Tensor:
        with skip_logdets(level):  # as MultiResolutionFlow samples
            return level.inverse(eps)[0]

    return Contestant("msflow", level, log_prob, sample, lambda: cnf.total_nfe, cnf.regularization_loss, lr)


# --------------------------------------------------------------------------- phases


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(c: Contestant, v: Tensor, eps: Tensor) -> tuple[float, tuple[int, ...]]:
    """One Adam step on mean bits/dim, plus RNODE's terms for the regularized contestants
    (``train_rnode``); returns the loss and (forward NFE, backward NFE)."""
    c.model.train()
    c.optimizer.zero_grad(set_to_none=True)
    n0 = c.nfe()
    loss = bits_per_dim(c.log_prob(v), v[0].numel()).mean()
    reg = c.regularization()
    if isinstance(reg, Tensor):
        loss = loss + reg
    n1 = c.nfe()
    loss.backward()
    n2 = c.nfe()
    c.optimizer.step()
    return loss.item(), (n1 - n0, n2 - n1)


def eval_step(c: Contestant, v: Tensor, eps: Tensor) -> tuple[float, tuple[int, ...]]:
    """Mean bits/dim with no gradients for the parameters (the divergence still needs autograd)."""
    c.model.eval()
    n0 = c.nfe()
    with torch.no_grad():
        bpd = bits_per_dim(c.log_prob(v), v[0].numel()).mean().item()
    return bpd, (c.nfe() - n0,)


def sample_step(c: Contestant, v: Tensor, eps: Tensor) -> tuple[float, tuple[int, ...]]:
    """Integrate ``eps`` back to images and quantize them to uint8."""
    c.model.eval()
    n0 = c.nfe()
    with torch.no_grad():
        images = ((c.sample(eps) + 0.5) * 256.0).floor().clamp(0, 255).to(torch.uint8)
        value = images.float().mean().item()
    return value, (c.nfe() - n0,)


STEPS: dict[str, Callable[[Contestant, Tensor, Tensor], tuple[float, tuple[int, ...]]]] = {
    "train": train_step,
    "eval": eval_step,
    "sample": sample_step,
    "train_rnode": train_step,  # on the RNODE-regularized pair
}
NFE_PARTS = {
    "train": ("forward", "backward"),
    "eval": ("solve",),
    "sample": ("solve",),
    "train_rnode": ("forward", "backward"),
}


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def time_phases(cfg: BenchConfig, pairs: dict[str, list[Contestant]], inputs: Inputs) -> tuple[dict, dict]:
    """Images/s and NFE per contestant and phase (``pairs[phase]``): interleaved repeats, warm-up excluded.

    Before every step the global RNG is seeded by the step's index, so both contestants draw the
    same training probes and stay on the same trajectory (same weights, same NFE).
    """
    names = [c.name for c in pairs[PHASES[0]]]
    wall = {n: {p: [] for p in PHASES} for n in names}
    cpu = {n: {p: [] for p in PHASES} for n in names}
    nfe = {n: {p: [] for p in PHASES} for n in names}
    last: dict[str, dict[str, float]] = {n: {} for n in names}
    for phase in PHASES:
        step, contestants = STEPS[phase], pairs[phase]
        for c in contestants:
            for i in range(cfg.warmup):
                torch.manual_seed(cfg.seed + i)
                step(c, inputs.v[i % len(inputs)], inputs.eps[i % len(inputs)])
        for r in range(cfg.repeats):
            for c in contestants if r % 2 == 0 else contestants[::-1]:
                _sync(cfg.device)
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for i in range(cfg.iters):
                    k = cfg.warmup + r * cfg.iters + i
                    torch.manual_seed(cfg.seed + k)
                    last[c.name][phase], counts = step(c, inputs.v[k % len(inputs)], inputs.eps[k % len(inputs)])
                    nfe[c.name][phase].append(counts)
                _sync(cfg.device)
                images = cfg.iters * cfg.batch
                wall[c.name][phase].append(images / (time.perf_counter() - wall0))
                cpu[c.name][phase].append(images / max(time.process_time() - cpu0, 1e-9))
    throughput = {
        n: {
            p: _summary(wall[n][p])
            | {"cpu_median": statistics.median(cpu[n][p]), "cpu_samples": cpu[n][p], "last_value": last[n][p]}
            for p in PHASES
        }
        for n in names
    }
    counts = {
        n: {p: {part: _summary([s[j] for s in nfe[n][p]]) for j, part in enumerate(NFE_PARTS[p])} for p in PHASES}
        for n in names
    }
    return throughput, counts


# --------------------------------------------------------------------------- equivalence


def check_equivalence(cfg: BenchConfig, ms: Contestant, ff: Contestant, inputs: Inputs) -> dict[str, Any]:
    """Same weights, inputs and probes: do the two compute the same bits/dim, gradients and samples?

    Eval bits/dim on the whole first batch (the bits/dim at init of the report); the training
    loss with its gradients and the samples on its first ``check_batch`` images. The training
    probe comes from the global RNG, seeded alike for both.
    """
    v, eps = inputs.v[0], inputs.eps[0]
    out: dict[str, Any] = {"bpd": {}, "nfe": {}}
    bpd, train, samples = {}, {}, {}
    for c in (ms, ff):
        c.model.eval()
        n0 = c.nfe()
        with torch.no_grad():
            bpd[c.name] = bits_per_dim(c.log_prob(v), v[0].numel())
            n1 = c.nfe()
            samples[c.name] = c.sample(eps[: cfg.check_batch])
        n2 = c.nfe()
        train[c.name] = _gradient_check_step(cfg, c, v)
        out["bpd"][c.name] = bpd[c.name].mean().item()
        out["nfe"][c.name] = {"eval": n1 - n0, "sample": n2 - n1} | train[c.name]["nfe"]
    out |= {
        "train_loss": {n: t["loss"] for n, t in train.items()},
        "eval_bpd_max_abs_diff": (bpd[ms.name] - bpd[ff.name]).abs().max().item(),
        "sample_max_abs_diff": (samples[ms.name] - samples[ff.name]).abs().max().item(),
    } | _compare_training(train[ms.name], train[ff.name])
    return out


def check_rnode_equivalence(cfg: BenchConfig, ms: Contestant, ff: Contestant, inputs: Inputs) -> dict[str, Any]:
    """The same check of the RNODE-regularized pair: its training loss, RNODE term, gradients and NFE."""
    train = {c.name: _gradient_check_step(cfg, c, inputs.v[0]) for c in (ms, ff)}
    return {
        "loss": {n: t["loss"] for n, t in train.items()},
        "regularization": {n: t["regularization"] for n, t in train.items()},
        "nfe": {n: t["nfe"] for n, t in train.items()},
        "regularization_abs_diff": abs(train[ms.name]["regularization"] - train[ff.name]["regularization"]),
    } | _compare_training(train[ms.name], train[ff.name])


def _gradient_check_step(cfg: BenchConfig, c: Contestant, v: Tensor) -> dict[str, Any]:
    """The training loss of ``train_step`` on the first ``check_batch`` images and its gradients; no update."""
    c.model.train()
    torch.manual_seed(cfg.seed)
    c.optimizer.zero_grad(set_to_none=True)
    n0 = c.nfe()
    value = bits_per_dim(c.log_prob(v[: cfg.check_batch]), v[0].numel()).mean()
    reg = c.regularization()
    if isinstance(reg, Tensor):
        value = value + reg
    n1 = c.nfe()
    value.backward()
    grads = [p.grad.detach().clone() for p in c.model.parameters()]
    c.optimizer.zero_grad(set_to_none=True)
    return {
        "loss": value.item(),
        "regularization": reg.item() if isinstance(reg, Tensor) else reg,
        "grads": grads,
        "nfe": {"train_forward": n1 - n0, "train_backward": c.nfe() - n1},
    }


def _compare_training(ms: dict[str, Any], ff: dict[str, Any]) -> dict[str, float]:
    pairs = list(zip(ms["grads"], ff["grads"], strict=True))
    grad_max = max(b.abs().max().item() for _, b in pairs)
    grad_diff = max((a - b).abs().max().item() for a, b in pairs)
    return {
        "train_loss_abs_diff": abs(ms["loss"] - ff["loss"]),
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_max,
        "grad_rel_diff": grad_diff / max(grad_max, 1e-30),
    }


# --------------------------------------------------------------------------- memory


def _steps_for_memory(cfg: BenchConfig, c: Contestant, phase: str, inputs: Inputs) -> Callable[[], None]:
    def run() -> None:
        for i in range(cfg.memory_iters):
            torch.manual_seed(cfg.seed + i)
            STEPS[phase](c, inputs.v[i % len(inputs)], inputs.eps[i % len(inputs)])

    return run


def memory_worker(cfg: BenchConfig, name: str, phase: str) -> dict[str, Any]:
    """Run in a fresh process: peak RSS of ``memory_iters`` steps of ``phase`` over the RSS before."""
    torch.set_num_threads(cfg.threads)
    inputs = Inputs.from_batches(make_batches(cfg), cfg.seed, cfg.device)
    c = {c.name: c for c in build_pair(cfg, rnode=phase == "train_rnode")}[name]
    # One small-batch step first, so one-time costs (thread pools, kernel caches, the autograd
    # engine, Adam's state) are not counted and the delta is what the batch itself needs.
    small = min(2, cfg.batch)
    STEPS[phase](c, inputs.v[0][:small], inputs.eps[0][:small])
    return measure_peak(_steps_for_memory(cfg, c, phase, inputs))


def measure_memory(cfg: BenchConfig, name: str, phase: str) -> dict[str, Any]:
    """CPU: median of ``memory_repeats`` fresh-process measurements (the allocator varies by a few MiB)."""
    config = json.dumps(dataclasses.asdict(cfg))
    cmd = worker_command(__file__, "--_memory-worker", name, phase, "--_config", config)
    return median_of_processes(cmd, cfg.memory_repeats, f"{name}/{phase}")


def cuda_memory(cfg: BenchConfig, c: Contestant, phase: str, inputs: Inputs) -> dict[str, Any]:
    """CUDA, in-process: peak allocation of ``memory_iters`` steps over the allocation before them."""
    return measure_cuda_peak(_steps_for_memory(cfg, c, phase, inputs), cfg.device)


# --------------------------------------------------------------------------- run + report


def _environment(cfg: BenchConfig) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "torchdiffeq": torchdiffeq.__version__,
        "msflow": getattr(msflow, "__version__", "?"),
        "python": platform.python_version(),
        "device": cfg.device,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": cfg.threads,
    }
    if cfg.device == "cuda":
        env |= {
            "gpu": torch.cuda.get_device_name(),
            "cuda": torch.version.cuda,
            "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
    return env


def run_benchmark(cfg: BenchConfig, memory: bool = True) -> dict[str, Any]:
    """Check, time and (optionally) measure the memory of both contestants; returns the JSON report."""
    torch.set_num_threads(cfg.threads)
    if cfg.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    env = _environment(cfg) | {"loadavg_before": list(os.getloadavg())}
    start = time.perf_counter()
    inputs = Inputs.from_batches(make_batches(cfg), cfg.seed, cfg.device)
    ms, ff = build_pair(cfg)
    # train_rnode trains its own pair, built alike: the same initial weights, RNODE on for both.
    rnode = list(build_pair(cfg, rnode=True))
    pairs = {p: rnode if p == "train_rnode" else [ms, ff] for p in PHASES}
    check = check_equivalence(cfg, ms, ff, inputs) | {"train_rnode": check_rnode_equivalence(cfg, *rnode, inputs)}
    models = {c.name: {"params": c.num_params(), "bpd_at_init": check["bpd"][c.name]} for c in (ms, ff)}
    throughput, nfe = time_phases(cfg, pairs, inputs)
    for c in (ms, ff):
        models[c.name]["bpd_after_timing"] = throughput[c.name]["eval"]["last_value"]
    if not memory:
        mem = {}
    elif cfg.device == "cuda":
        mem = {
            n: {p: cuda_memory(cfg, c, p, inputs) for p in PHASES for c in pairs[p] if c.name == n}
            for n in ("msflow", BASELINE)
        }
    else:
        del ms, ff, rnode, pairs
        mem = {n: {p: measure_memory(cfg, n, p) for p in PHASES} for n in ("msflow", BASELINE)}
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    return {
        "config": dataclasses.asdict(cfg),
        "environment": env,
        "models": models,
        "check": check,
        "throughput": throughput,
        "nfe": nfe,
        "memory": mem,
        "ratios": {p: _ratios(throughput, mem, p) for p in PHASES},
    }


def _ratios(throughput: dict[str, Any], mem: dict[str, Any], phase: str) -> dict[str, float | None]:
    """msflow / ffjord: > 1 is faster for throughputs, < 1 is leaner for memory."""
    ms, ff = throughput["msflow"][phase], throughput[BASELINE][phase]
    # Repeat r of both ran back to back, so their quotient cancels slow drifts in machine load.
    paired = statistics.median(a / b for a, b in zip(ms["samples"], ff["samples"], strict=True))
    peak = mem["msflow"][phase]["peak_delta_mib"] / mem[BASELINE][phase]["peak_delta_mib"] if mem else None
    return {
        "throughput": ms["median"] / ff["median"],
        "throughput_paired": paired,
        "cpu_throughput": ms["cpu_median"] / ff["cpu_median"],
        "peak_memory": peak,
    }


def _fmt_rate(t: dict[str, Any]) -> str:
    return f"{t['median']:.1f} [{t['min']:.1f}-{t['max']:.1f}]"


def _fmt_nfe(counts: dict[str, Any]) -> str:
    return " + ".join(f"{c['median']:g}" for c in counts.values())


def markdown_table(report: dict[str, Any]) -> str:
    """One row per phase: throughputs, ratios, NFE, peak memory; then what was checked."""
    cfg, env, thr, nfe, mem = (report[k] for k in ("config", "environment", "throughput", "nfe", "memory"))
    solver = SOLVERS[cfg["solver"]]
    hardware = env["gpu"] if cfg["device"] == "cuda" else env["cpu"]
    lines = [
        f"CNF {'x'.join(map(str, cfg['image_shape']))}, field {cfg['layers'] + 1} convs x {cfg['hidden']} "
        f"hidden, batch {cfg['batch']}, data {cfg['data']}; train {SolverSettings(**solver['train']).describe()}, "
        f"eval and sample {SolverSettings(**solver['eval']).describe()}, {cfg['gradients']} gradients; "
        f"{cfg['device']}, {env['threads']} threads; torch {env['torch']}, torchdiffeq {env['torchdiffeq']}; "
        f"{hardware}; load average {env['loadavg_before'][0]:.2f} -> {env['loadavg_after'][0]:.2f}",
        "",
        "| phase | msflow img/s | ffjord img/s | **speed ratio** | paired ratio | CPU-time ratio "
        "| msflow NFE | ffjord NFE | msflow peak MiB | ffjord peak MiB | memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in (p for p in PHASES if p in report["ratios"]):  # reports before train_rnode lack it
        r = report["ratios"][phase]
        m, b = mem.get("msflow", {}).get(phase), mem.get(BASELINE, {}).get(phase)
        mem_cols = (
            f"{m['peak_delta_mib']:.1f} | {b['peak_delta_mib']:.1f} | {r['peak_memory']:.2f}" if m else "- | - | -"
        )
        lines.append(
            f"| {phase} | {_fmt_rate(thr['msflow'][phase])} | {_fmt_rate(thr[BASELINE][phase])} "
            f"| **{r['throughput']:.2f}** | {r['throughput_paired']:.2f} | {r['cpu_throughput']:.2f} "
            f"| {_fmt_nfe(nfe['msflow'][phase])} | {_fmt_nfe(nfe[BASELINE][phase])} | {mem_cols} |"
        )
    check, models = report["check"], report["models"]
    memory_how = (
        "torch.cuda.max_memory_allocated over the allocation before, in-process"
        if cfg["device"] == "cuda"
        else f"peak RSS minus RSS before, fresh process, median of {cfg['memory_repeats']}"
    )
    lines += [
        "",
        "Speed ratio = median msflow img/s / median ffjord img/s (> 1: msflow faster); [min-max] over "
        f"{cfg['repeats']} interleaved repeats of {cfg['iters']} step(s), {cfg['warmup']} warm-up step(s) excluded. "
        "Paired ratio: median of the per-repeat ratios; CPU-time ratio: the same on images per CPU-second. "
        "NFE: median vector-field evaluations per step (train: forward solve + backward solve). "
        f"Peak MiB: extra memory of {cfg['memory_iters']} step(s) ({memory_how}); memory ratio < 1: msflow "
        f"uses less. Parameters: msflow {models['msflow']['params']:,}, ffjord {models[BASELINE]['params']:,} "
        "(identical weights at the start). Bits/dim at init (eval, same images and probe): msflow "
        f"{models['msflow']['bpd_at_init']:.5f}, ffjord {models[BASELINE]['bpd_at_init']:.5f} "
        f"(max per-image difference {check['eval_bpd_max_abs_diff']:.1e}); training loss difference "
        f"{check['train_loss_abs_diff']:.1e}, gradients' max relative difference {check['grad_rel_diff']:.1e}, "
        f"samples' max difference {check['sample_max_abs_diff']:.1e}; after timing: msflow "
        f"{models['msflow']['bpd_after_timing']:.4f}, ffjord {models[BASELINE]['bpd_after_timing']:.4f} bits/dim.",
    ]
    if "train_rnode" in check:
        rnode = check["train_rnode"]
        lines[-1] += (
            f" train_rnode: a second pair from the same initial weights, loss bits/dim + {cfg['rnode_weight']:g} "
            f"x (kinetic + Jacobian norm), the two RNODE states excluded from step-size control in both; "
            f"RNODE term msflow {rnode['regularization']['msflow']:.6g}, "
            f"ffjord {rnode['regularization'][BASELINE]:.6g}, "
            f"loss difference {rnode['train_loss_abs_diff']:.1e}, gradients' max relative difference "
            f"{rnode['grad_rel_diff']:.1e}."
        )
    return "\n".join(lines)


PHASE_LABELS = {"train": "train", "train_rnode": "train + RNODE", "eval": "eval", "sample": "sample"}


def summary_table(report: dict[str, Any]) -> str:
    """The README's form of a report: a line on the run, one row per phase, one line on the checks.

    Rendered into README.md from the committed JSON by ``scripts/render_tables.py``.
    """
    cfg, env, thr, nfe, mem, check = (
        report[k] for k in ("config", "environment", "throughput", "nfe", "memory", "check")
    )
    where = env["gpu"] if cfg["device"] == "cuda" else f"{env['cpu']}, {env['threads']} CPU threads"
    lines = [
        f"{where}, batch {cfg['batch']}, median of {cfg['repeats']} interleaved repeats, load average "
        f"{env['loadavg_before'][0]:.2f} -> {env['loadavg_after'][0]:.2f}:",
        "",
        "| phase | msflow img/s | ffjord img/s | **speed ratio** | paired ratio | NFE msflow / ffjord "
        "| peak MiB msflow / ffjord |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for phase in (p for p in PHASE_LABELS if p in report["ratios"]):
        r = report["ratios"][phase]
        peak = (
            f"{mem['msflow'][phase]['peak_delta_mib']:.1f} / {mem[BASELINE][phase]['peak_delta_mib']:.1f}"
            if mem
            else "-"
        )
        lines.append(
            f"| {PHASE_LABELS[phase]} | {thr['msflow'][phase]['median']:.1f} | {thr[BASELINE][phase]['median']:.1f} "
            f"| **{r['throughput']:.2f}** | {r['throughput_paired']:.2f} "
            f"| {_fmt_nfe(nfe['msflow'][phase])} / {_fmt_nfe(nfe[BASELINE][phase])} | {peak} |"
        )
    checked = (
        f"Checked on the same images, weights and probes: bits/dim at init {check['bpd']['msflow']:.5f} / "
        f"{check['bpd'][BASELINE]:.5f} (largest per-image difference {check['eval_bpd_max_abs_diff']:.1e}), "
        f"training loss difference {check['train_loss_abs_diff']:.1e}, gradients {check['grad_rel_diff']:.1e} "
        f"(relative), samples {check['sample_max_abs_diff']:.1e}"
    )
    if "train_rnode" in check:
        rnode = check["train_rnode"]
        checked += (
            f"; with RNODE (weights {cfg['rnode_weight']:g}): loss difference {rnode['train_loss_abs_diff']:.1e}, "
            f"gradients {rnode['grad_rel_diff']:.1e}"
        )
    return "\n".join([*lines, "", checked + "."])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 repeats, 1 memory process (about 2 minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny field and images, seconds (tests)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default 2; smoke: 1)")
    parser.add_argument("--repeats", type=int, help="override the number of timed repeats")
    parser.add_argument("--batch", type=int, help="override the batch size (default 16)")
    parser.add_argument(
        "--solver",
        choices=sorted(SOLVERS),
        help="solver settings of both contestants: 'mrcnf' (default: msflow's MRCNF, bosh3 1e-3 to train, "
        "dopri5 1e-5 to evaluate) or 'ffjord' (dopri5 1e-5 for both, FFJORD's defaults)",
    )
    parser.add_argument(
        "--gradients",
        choices=["adjoint", "direct"],
        help="adjoint method (default, FFJORD's and MRCNF's) or back-propagation through the solver, both contestants",
    )
    parser.add_argument("--data", choices=["mnist14", "random"], help="images (default mnist14; smoke: random)")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--_memory-worker", nargs=2, metavar=("NAME", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory_worker:
        raw = json.loads(args._config)
        cfg = BenchConfig(**(raw | {"image_shape": tuple(raw["image_shape"])}))
        print(json.dumps(memory_worker(cfg, *args._memory_worker)))
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda, but CUDA is not available (torch {torch.__version__}); use --device cpu")
    cfg = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    options = {
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "batch": args.batch,
        "solver": args.solver,
        "gradients": args.gradients,
        "data": args.data,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in options.items() if v is not None})
    report = run_benchmark(cfg, memory=not args.no_memory)
    print(markdown_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
