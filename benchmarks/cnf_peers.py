r"""Peer benchmark: msflow's CNF block against a plain torchdiffeq FFJORD of the same size.

One command times three phases of both and prints throughput ratios (msflow / ffjord; above 1
means msflow is faster), the function evaluations (NFE) of every phase and peak-memory ratios:

- ``train``: ``log p(v)``, bits/dim, backward (adjoint by default), Adam step (images/s;
  NFE of the forward solve and of the backward solve);
- ``eval``: bits/dim with no gradients for the parameters (images/s, NFE);
- ``sample``: integrate ``N(0, I)`` noise from ``t = T`` back to 0 (images/s, NFE).

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

PHASES = ("train", "eval", "sample")
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
    """``d/dt (x, logdet) = (f, eps^T (df/dx) eps)``: the ODE an FFJORD user hands torchdiffeq.

    An ``nn.Module``, so that ``odeint_adjoint`` finds the field's parameters by itself.
    """

    def __init__(self, field: nn.Module) -> None:
        super().__init__()
        self.field = field
        self.probe: Tensor | None = None
        self.nfe = 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
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
        trace = (e_jac * self.probe).flatten(1).sum(1)
        return (dx, trace) if need_graph else (dx.detach(), trace.detach())


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
    """

    def __init__(
        self,
        field: nn.Module,
        end_time: float,
        train_solver: SolverSettings,
        eval_solver: SolverSettings,
        adjoint: bool = True,
        probe_seed: int = 0,
    ) -> None:
        super().__init__()
        self.dynamics, self.sampler = _Divergence(field), _Field(field)
        self.end_time, self.adjoint, self.probe_seed = end_time, adjoint, probe_seed
        self.train_solver, self.eval_solver = train_solver, eval_solver

    @property
    def nfe(self) -> int:
        return self.dynamics.nfe + self.sampler.nfe

    def _solve(self, func: nn.Module, state: Any, t0: float, t1: float, device: torch.device) -> Any:
        s = self.train_solver if self.training else self.eval_solver
        t = torch.tensor([t0, t1], device=device)
        solve = odeint_adjoint if self.adjoint and torch.is_grad_enabled() else odeint
        return solve(func, state, t, rtol=s.rtol, atol=s.atol, method=s.method)

    def log_prob(self, v: Tensor) -> Tensor:
        """``(B,)`` ``log p(v)`` in nats: ``log N(z; 0, I) + int_0^T tr(df/dx) dt``."""
        gen = None if self.training else torch.Generator(device=v.device).manual_seed(self.probe_seed)
        self.dynamics.probe = torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype)
        zs, logdets = self._solve(self.dynamics, (v, v.new_zeros(v.shape[0])), 0.0, self.end_time, v.device)
        z = zs[-1]
        return -0.5 * (z * z + math.log(2 * math.pi)).flatten(1).sum(1) + logdets[-1]

    def sample(self, eps: Tensor) -> Tensor:
        """Integrate ``eps`` from ``t = T`` back to 0."""
        return self._solve(self.sampler, eps, self.end_time, 0.0, eps.device)[-1]


# --------------------------------------------------------------------------- contestants


@dataclass
class Contestant:
    """A model and the three operations being timed, written with each side's own API."""

    name: str
    model: nn.Module  # train() / eval() selects the solver settings of the phase
    log_prob: Callable[[Tensor], Tensor]  # v -> (B,) log p(v), nats
    sample: Callable[[Tensor], Tensor]  # N(0, I) noise -> v
    nfe: Callable[[], int]  # evaluations of the vector field so far
    lr: float = 1e-3
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_pair(cfg: BenchConfig) -> tuple[Contestant, Contestant]:
    """msflow's MRCNF level and the FFJORD peer, with identical weights."""
    torch.manual_seed(cfg.seed)
    solver = SOLVERS[cfg.solver]
    density = cnf_density(
        steps=1,
        hidden=cfg.hidden,
        layers=cfg.layers,
        end_time=cfg.end_time,
        solver=solver,
        adjoint=cfg.gradients == "adjoint",
        kinetic_weight=0.0,  # plain maximum likelihood, as FFJORD (see README: RNODE is off for both)
        jacobian_weight=0.0,
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
    )
    return _msflow_contestant(level, cnf, cfg.lr), Contestant(
        BASELINE, peer, peer.log_prob, peer.sample, lambda: peer.nfe, cfg.lr
    )


def _msflow_contestant(level: nn.Module, cnf: CNF, lr: float) -> Contestant:
    def log_prob(v: Tensor) -> Tensor:
        z, logdet = level(v)
        return standard_normal_log_prob(z) + logdet

    def sample(eps: Tensor) -> Tensor:
        with skip_logdets(level):  # as MultiResolutionFlow samples
            return level.inverse(eps)[0]

    return Contestant("msflow", level, log_prob, sample, lambda: cnf.total_nfe, lr)


# --------------------------------------------------------------------------- phases


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(c: Contestant, v: Tensor, eps: Tensor) -> tuple[float, tuple[int, ...]]:
    """One Adam step on mean bits/dim; returns the loss and (forward NFE, backward NFE)."""
    c.model.train()
    c.optimizer.zero_grad(set_to_none=True)
    n0 = c.nfe()
    loss = bits_per_dim(c.log_prob(v), v[0].numel()).mean()
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
}
NFE_PARTS = {"train": ("forward", "backward"), "eval": ("solve",), "sample": ("solve",)}


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def time_phases(cfg: BenchConfig, contestants: list[Contestant], inputs: Inputs) -> tuple[dict, dict]:
    """Images/s and NFE per contestant and phase: interleaved repeats, warm-up excluded.

    Before every step the global RNG is seeded by the step's index, so both contestants draw the
    same training probes and stay on the same trajectory (same weights, same NFE).
    """
    names = [c.name for c in contestants]
    wall = {n: {p: [] for p in PHASES} for n in names}
    cpu = {n: {p: [] for p in PHASES} for n in names}
    nfe = {n: {p: [] for p in PHASES} for n in names}
    last: dict[str, dict[str, float]] = {n: {} for n in names}
    for phase in PHASES:
        step = STEPS[phase]
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
    bpd, grads, loss, samples = {}, {}, {}, {}
    for c in (ms, ff):
        c.model.eval()
        n0 = c.nfe()
        with torch.no_grad():
            bpd[c.name] = bits_per_dim(c.log_prob(v), v[0].numel())
            n1 = c.nfe()
            samples[c.name] = c.sample(eps[: cfg.check_batch])
        n2 = c.nfe()
        c.model.train()
        torch.manual_seed(cfg.seed)
        c.optimizer.zero_grad(set_to_none=True)
        value = bits_per_dim(c.log_prob(v[: cfg.check_batch]), v[0].numel()).mean()
        n3 = c.nfe()
        value.backward()
        loss[c.name] = value.item()
        grads[c.name] = [p.grad.detach().clone() for p in c.model.parameters()]
        c.optimizer.zero_grad(set_to_none=True)
        out["bpd"][c.name] = bpd[c.name].mean().item()
        out["nfe"][c.name] = {
            "eval": n1 - n0,
            "sample": n2 - n1,
            "train_forward": n3 - n2,
            "train_backward": c.nfe() - n3,
        }
    pairs = list(zip(grads[ms.name], grads[ff.name], strict=True))
    grad_max = max(b.abs().max().item() for _, b in pairs)
    out |= {
        "eval_bpd_max_abs_diff": (bpd[ms.name] - bpd[ff.name]).abs().max().item(),
        "train_loss_abs_diff": abs(loss[ms.name] - loss[ff.name]),
        "grad_max_abs_diff": max((a - b).abs().max().item() for a, b in pairs),
        "grad_max_abs": grad_max,
        "sample_max_abs_diff": (samples[ms.name] - samples[ff.name]).abs().max().item(),
    }
    out["grad_rel_diff"] = out["grad_max_abs_diff"] / max(grad_max, 1e-30)
    return out


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
    c = {c.name: c for c in build_pair(cfg)}[name]
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
    check = check_equivalence(cfg, ms, ff, inputs)
    models = {c.name: {"params": c.num_params(), "bpd_at_init": check["bpd"][c.name]} for c in (ms, ff)}
    throughput, nfe = time_phases(cfg, [ms, ff], inputs)
    for c in (ms, ff):
        models[c.name]["bpd_after_timing"] = throughput[c.name]["eval"]["last_value"]
    if not memory:
        mem = {}
    elif cfg.device == "cuda":
        mem = {c.name: {p: cuda_memory(cfg, c, p, inputs) for p in PHASES} for c in (ms, ff)}
    else:
        del ms, ff
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
    for phase in PHASES:
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
    return "\n".join(lines)


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
