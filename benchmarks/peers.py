"""Peer benchmark: msflow's Glow against normflows' and FrEIA's Glow of the same architecture.

One command times three phases for the three libraries and prints, against **each** peer,
throughput ratios (msflow / peer; above 1 means msflow is faster) and peak-memory ratios:

- ``train``: dequantize uint8 images, bits/dim, backward, Adam step (images/s);
- ``eval``: bits/dim under ``torch.inference_mode`` (images/s);
- ``sample``: draw a batch of uint8 images at temperature 1 (images/s).

Each peer runs at its best, with what its user could switch on in one line: in-place ReLUs in
its coupling nets, both memory layouts (``normflows`` and ``normflows+cl`` for channels-last; the
ratios use the faster per phase, ``--peer-layouts`` pins one) and, with ``--precision
bf16-mixed``, ``torch.autocast(bfloat16)`` around the whole model (``normflows[bf16-mixed]``) beside
msflow's bf16-mixed subnets: float32 is compared with float32, bf16 with bf16.

Two workloads (``--shape``, both by default), 8 steps per level, coupling nets 128 wide, batch 64:

- ``patches32``: 3x32x32 photo patches (``get_dataset("patches32")``), 3 levels;
- ``mnist``: 1x28x28 MNIST digits (``get_dataset("mnist5k")``), 2 levels.

How it measures (see benchmarks/README.md for why):

- Timing runs every library in one process on the same batches, **interleaved**: each repeat
  times ``iters`` steps of every contestant, alternating the order, so a change in machine load
  hits all alike. Warm-up steps (and ActNorm's data-dependent initialisation) are excluded; the
  reported figure is the median over repeats. On CUDA the device is synchronised before every
  timer read.
- Peak memory on the CPU is measured in a **fresh subprocess per (library, phase)**: the model
  is built, initialised and run once on a small batch (so one-time costs are paid), freed heap is
  returned to the OS (``malloc_trim``), the kernel's RSS high-water mark is reset
  (``/proc/self/clear_refs``), ``memory_iters`` full-batch steps run, and the peak RSS
  (``VmHWM``) minus the RSS before them is reported: the extra resident memory the phase needs
  at this batch size; median of ``memory_repeats`` such processes. On CUDA it is measured in
  the benchmark process: ``max_memory_allocated`` over ``memory_iters`` full-batch steps after
  one warm step, minus the memory allocated before them.

Usage::

    python benchmarks/peers.py --quick --json quick.json      # ~2.5 min on 2 idle CPU cores
    python benchmarks/peers.py --json peers.json              # full run: ~5 min idle, up to ~15 min busy
    python benchmarks/peers.py --precision bf16-mixed         # + msflow bf16-mixed vs the peers under bf16 autocast
    python benchmarks/peers.py --device cuda --precision bf16-mixed --json gpu.json  # ~1.5 min on an H100
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _memory import (
    cpu_bf16_units,
    cpu_features,
    cpu_name,
    measure_cuda_peak,
    measure_peak,
    median_of_processes,
    median_run,
    worker_command,
)
from peers_report import _hardware, markdown_table  # noqa: F401  (_hardware: kernel_bounds imports it from here)
from torch import Tensor, nn

PHASES = ("train", "eval", "sample")
PEERS = ("normflows", "freia")


@dataclass(frozen=True)
class BenchConfig:
    """Architecture, workload and repetition counts of one benchmark run on one workload."""

    workload: str = "patches32"  # the name in reports
    image_shape: tuple[int, int, int] = (3, 32, 32)
    levels: int = 3
    steps: int = 8
    hidden: int = 128
    batch: int = 64
    threads: int = 2  # torch threads; CPU only
    data: str = "patches32"  # "patches32", "mnist5k" or "random" (uniform uint8 noise)
    device: str = "cpu"
    num_batches: int = 4  # distinct batches cycled through by every phase
    warmup: int = 2  # untimed steps per (contestant, phase)
    repeats: int = 8  # timed repeats; the median is reported
    iters: int = 2  # steps per timed repeat
    memory_iters: int = 2  # full-batch steps run while measuring peak memory
    memory_repeats: int = 2  # measurements per (contestant, phase); the median is reported
    lr: float = 1e-3
    seed: int = 0


WORKLOADS: dict[str, dict[str, Any]] = {
    "patches32": {"image_shape": (3, 32, 32), "levels": 3, "data": "patches32"},
    "mnist": {"image_shape": (1, 28, 28), "levels": 2, "data": "mnist5k"},
}
# The smoke preset keeps MNIST's real digits (they are small) but shrinks the patches to noise.
SMOKE_WORKLOADS: dict[str, dict[str, Any]] = {
    "patches32": {"image_shape": (3, 8, 8), "levels": 2, "data": "random"},
    "mnist": WORKLOADS["mnist"],
}

PRESETS: dict[str, dict[str, Any]] = {
    "full": {},  # 8 repeats x 2 steps per phase and library, 2 memory processes each
    "quick": {"warmup": 1, "repeats": 3, "iters": 1, "memory_iters": 1, "memory_repeats": 1},
    # Tiny model and data for tests: exercises every code path in seconds. One thread, because
    # two OpenMP threads on a busy machine can make tiny ops ~100x slower (spinning barriers).
    "smoke": {
        "threads": 1,
        "steps": 1,
        "hidden": 8,
        "batch": 4,
        "num_batches": 2,
        "warmup": 1,
        "repeats": 1,
        "iters": 1,
        "memory_iters": 1,
        "memory_repeats": 1,
    },
}
# A GPU step takes milliseconds: more steps per timed repeat keep the synchronisation around the
# timers negligible, and memory needs no fresh processes, so every figure is cheap to repeat.
CUDA_PRESETS: dict[str, dict[str, Any]] = {
    "full": {"warmup": 3, "repeats": 8, "iters": 5, "memory_repeats": 3},
    "quick": {"warmup": 2, "repeats": 3, "iters": 3},
    "smoke": {},
}


def make_config(preset: str, workload: str, device: str = "cpu", **overrides: Any) -> BenchConfig:
    """The configuration of ``preset`` for ``workload`` on ``device``, then ``overrides``."""
    shapes = SMOKE_WORKLOADS if preset == "smoke" else WORKLOADS
    on_gpu = CUDA_PRESETS[preset] if torch.device(device).type == "cuda" else {}
    fields = shapes[workload] | PRESETS[preset] | on_gpu | overrides
    return BenchConfig(workload=workload, device=device, **fields)


# --------------------------------------------------------------------------- data


def make_batches(cfg: BenchConfig) -> list[Tensor]:
    """``num_batches`` seeded uint8 batches (on the CPU): bundled images, or noise."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.num_batches * cfg.batch
    if cfg.data in ("patches32", "mnist5k"):
        from msflow.data import get_dataset

        images = get_dataset(cfg.data, "train").images
        if tuple(images.shape[1:]) != cfg.image_shape:
            raise ValueError(
                f"{cfg.data} images are {tuple(images.shape[1:])}, not {cfg.image_shape}; use data='random'"
            )
        idx = torch.randperm(images.shape[0], generator=gen)[:n]
        if idx.numel() < n:
            idx = idx.repeat(math.ceil(n / idx.numel()))[:n]
        images = images[idx]
    elif cfg.data == "random":
        images = torch.randint(0, 256, (n, *cfg.image_shape), generator=gen, dtype=torch.uint8)
    else:
        raise ValueError(f"unknown data {cfg.data!r}; use 'patches32', 'mnist5k' or 'random'")
    return list(images.split(cfg.batch))


# --------------------------------------------------------------------------- contestants


@dataclass
class Contestant:
    """A model plus the three operations being timed, written with each library's own API."""

    name: str
    model: nn.Module
    bits_per_dim: Callable[[Tensor], Tensor]  # uint8 images -> (B,) bits/dim, dequantized inside
    sample: Callable[[int], Tensor]  # n -> uint8 images
    precision: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    lr: float = 1e-3
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=self.lr)

    def num_params(self) -> int:
        """Trainable parameters (FrEIA keeps its fixed 1x1 convs and squeeze kernels as frozen ones)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> float:
        """Run ActNorm's data-dependent initialisation (every library does it on the first call)."""
        with self.precision():
            return self.bits_per_dim(x).mean().item()

    @torch.inference_mode()
    def check_device(self, x: Tensor) -> None:
        """Raise unless the weights, the bits/dim and the samples all live on ``x``'s device."""
        with self.precision():
            outputs = {"bits/dim": self.bits_per_dim(x[:2]), "samples": self.sample(2)}
        # 0-d buffers are flags, not compute: normflows' ActNorm swaps its "initialised" flag for a
        # new CPU scalar on its first call, whatever the device.
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.dim() > 0]
        where = {f"{len(tensors)} weights": {t.device for t in tensors}} | {k: {v.device} for k, v in outputs.items()}
        if any(devices != {x.device} for devices in where.values()):
            raise RuntimeError(f"{self.name} does not run on {x.device} alone: {where}")


def _dequantize(x: Tensor) -> Tensor:
    """What msflow computes inside ``bits_per_dim``: ``v = (x + u) / 256 - 1/2``, ``u ~ U[0, 1)``."""
    return (x.to(torch.float32) + torch.rand(x.shape, device=x.device)) / 256.0 - 0.5


def _quantize(v: Tensor) -> Tensor:
    return ((v + 0.5) * 256.0).floor().clamp(0, 255).to(torch.uint8)


def build_msflow(cfg: BenchConfig, precision: str = "float32") -> Contestant:
    """msflow's Glow: squeeze -> steps x [ActNorm, LU 1x1, affine coupling] -> split prior.

    The split priors are channel-wise (a learned mean and scale per channel, as normflows'
    ``GlowBase``), not Glow's conditional ones: neither peer predicts a factored-out half from the
    kept half, so this is the same architecture as theirs.
    """
    from msflow.models.glow import glow
    from msflow.nn import subnet_precision

    torch.manual_seed(cfg.seed)
    model = glow(
        cfg.image_shape,
        levels=cfg.levels,
        steps=cfg.steps,
        hidden=cfg.hidden,
        preprocess="center",
        split_prior="channelwise",
    )
    model.to(cfg.device)
    name = "msflow" if precision == "float32" else f"msflow[{precision}]"
    return Contestant(
        name=name,
        model=model,
        bits_per_dim=model.bits_per_dim,
        sample=lambda n: model.sample(n, temperature=1.0),
        precision=lambda: subnet_precision(precision),
        lr=cfg.lr,
    )


def normflows_glow(cfg: BenchConfig) -> nn.Module:
    """normflows' Glow with the same levels/steps/width (pattern of its ``examples/glow.ipynb``).

    normflows lists levels coarse to fine in the *sampling* direction: level ``i`` is
    ``steps`` GlowBlocks then an un-squeeze; in the density direction each level squeezes,
    runs the blocks in reverse (ActNorm -> LU 1x1 conv -> coupling) and splits off half the
    channels, which is msflow's order.
    """
    import normflows as nf

    c, h, w = cfg.image_shape
    levels = cfg.levels
    q0, flows, merges = [], [], []
    for i in range(levels):
        fine = levels - 1 - i  # msflow's level index (0 = finest)
        channels = 4 * c * 2**fine
        blocks = [
            nf.flows.GlowBlock(channels, cfg.hidden, scale=True, scale_map="sigmoid", split_mode="channel", use_lu=True)
            for _ in range(cfg.steps)
        ]
        flows.append([*blocks, nf.flows.Squeeze()])
        side = 2 ** (fine + 1)
        latent_channels = channels if i == 0 else channels // 2
        q0.append(nf.distributions.GlowBase((latent_channels, h // side, w // side)))
        if i > 0:
            merges.append(nf.flows.Merge())
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def inplace_relus(model: nn.Module) -> nn.Module:
    """Swap every ``LeakyReLU(0)`` of ``model`` for an in-place ``ReLU``: the same function, one
    activation-sized allocation less each (msflow's coupling nets use in-place ReLUs).

    normflows builds its coupling nets with ``LeakyReLU(leaky=0.0)``; torch refuses an in-place
    LeakyReLU with a slope of 0 under autograd, so the one line a user would write is this swap.
    """
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.LeakyReLU) and child.negative_slope == 0.0:
                setattr(module, name, nn.ReLU(inplace=True))
    return model


def peer_precision(device: str, precision: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """What a peer's user switches on with one line: the whole model call under ``torch.autocast``.

    ``bf16-mixed`` autocasts every matmul and convolution of the peer (its 1x1 convolutions too,
    which msflow keeps in float32); elementwise work and log-dets follow autocast's own rules.
    """
    if precision == "float32":
        return contextlib.nullcontext
    if precision != "bf16-mixed":
        raise ValueError(f"unknown precision {precision!r}; use 'float32' or 'bf16-mixed'")
    device_type = torch.device(device).type
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16)


def _layout(v: Tensor, channels_last: bool) -> Tensor:
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


def build_normflows(cfg: BenchConfig, precision: str = "float32", channels_last: bool = False) -> Contestant:
    """normflows' Glow, fed exactly what msflow computes internally: v = (x + u) / 256 - 1/2.

    In-place ReLUs (:func:`inplace_relus`); ``channels_last`` converts the weights and the input.
    """
    from msflow.metrics.bpd import bits_per_dim

    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        # normflows' LU 1x1 conv calls the deprecated torch.lu once per block at build time.
        warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")
        model = inplace_relus(normflows_glow(cfg)).to(cfg.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    num_dims = math.prod(cfg.image_shape)

    def bpd(x: Tensor) -> Tensor:
        return bits_per_dim(model.log_prob(_layout(_dequantize(x), channels_last), None), num_dims)

    def sample(n: int) -> Tensor:
        v, _ = model.sample(n)  # normflows always returns log q too; that cost is part of its API
        return _quantize(v)

    return Contestant(
        name=spec_name("normflows", precision, channels_last),
        model=model,
        bits_per_dim=bpd,
        sample=sample,
        precision=peer_precision(cfg.device, precision),
        lr=cfg.lr,
    )


def glow_log_scale(h: Tensor) -> Tensor:
    """Glow's coupling log-scale ``log sigmoid(h + 2)``, given to FrEIA as its clamp function."""
    return F.logsigmoid(h + 2.0)


def _freia_subnet(hidden: int) -> Callable[[int, int], nn.Module]:
    """The coupling net handed to FrEIA: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-init conv3x3.

    The ReLUs work in place, as msflow's do (one activation-sized allocation less each).
    """

    def build(c_in: int, c_out: int) -> nn.Module:
        last = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(last.weight)  # every coupling starts as a fixed scaling, as in msflow
        nn.init.zeros_(last.bias)
        return nn.Sequential(
            nn.Conv2d(c_in, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            last,
        )

    return build


def freia_glow(cfg: BenchConfig) -> nn.Module:
    """FrEIA's Glow with the same levels/steps/width: a ``GraphINN`` of FrEIA's own modules.

    Each level is ``IRevNetDownsampling`` (FrEIA's squeeze; its default backend is a strided
    0/1 convolution whose channel order is exactly ``pixel_unshuffle``'s), ``steps`` x
    [``ActNorm`` (data-initialised), ``Fixed1x1Conv`` with a random rotation (FrEIA 0.2 has no
    learned invertible 1x1 conv), ``AffineCouplingOneSided`` (one subnet; the first half of the
    channels conditions, the second is scaled by ``sigmoid(h + 2)`` and shifted)], then ``Split``
    into halves: the first goes on to the next level, the second is a latent (an ``OutputNode``).
    The latents come out fine to coarse, with the shapes of msflow's.

    Example:
        >>> cfg = make_config("smoke", "patches32")
        >>> model = freia_glow(cfg)
        >>> zs, log_det = model(torch.rand(2, *cfg.image_shape))
        >>> [tuple(z.shape) for z in zs], tuple(log_det.shape)
        ([(2, 6, 4, 4), (2, 24, 2, 2)], (2,))
    """
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    gen = torch.Generator().manual_seed(cfg.seed)
    node = Ff.InputNode(*cfg.image_shape, name="v")
    nodes, latents = [node], []
    for level in range(cfg.levels):
        node = Ff.Node(node, Fm.IRevNetDownsampling, {}, name=f"squeeze{level}")
        nodes.append(node)
        channels = node.output_dims[0][0]
        # clamp 1 and Glow's log-scale as the clamp function: FrEIA then computes s = log sigmoid(h + 2).
        coupling = {"subnet_constructor": _freia_subnet(cfg.hidden), "clamp": 1.0, "clamp_activation": glow_log_scale}
        for step in range(cfg.steps):
            rotation = torch.linalg.qr(torch.randn(channels, channels, generator=gen)).Q  # Glow's W at init
            actnorm = Ff.Node(node, Fm.ActNorm, {}, name=f"actnorm{level}.{step}")
            conv = Ff.Node(actnorm, Fm.Fixed1x1Conv, {"M": rotation}, name=f"conv1x1_{level}.{step}")
            node = Ff.Node(conv, Fm.AffineCouplingOneSided, coupling, name=f"coupling{level}.{step}")
            nodes += [actnorm, conv, node]
        if level < cfg.levels - 1:
            split = Ff.Node(node, Fm.Split, {}, name=f"split{level}")
            nodes.append(split)
            latents.append(Ff.OutputNode(split.out1, name=f"z{level}"))
            node = split.out0
        else:
            latents.append(Ff.OutputNode(node, name=f"z{level}"))
    return Ff.GraphINN(nodes + latents, force_tuple_output=True)


def build_freia(cfg: BenchConfig, precision: str = "float32", channels_last: bool = False) -> Contestant:
    """FrEIA's Glow, fed v = (x + u) / 256 - 1/2 like normflows; its latents are scored by N(0, I)."""
    from msflow.distributions import standard_normal_log_prob
    from msflow.metrics.bpd import bits_per_dim

    torch.manual_seed(cfg.seed)
    model = freia_glow(cfg).to(cfg.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    latent_shapes = list(model.global_out_shapes)
    num_dims = math.prod(cfg.image_shape)

    def bpd(x: Tensor) -> Tensor:
        zs, log_det = model(_layout(_dequantize(x), channels_last))
        return bits_per_dim(log_det + sum(standard_normal_log_prob(z) for z in zs), num_dims)

    def sample(n: int) -> Tensor:
        device = next(model.parameters()).device
        zs = [_layout(torch.randn(n, *shape, device=device), channels_last) for shape in latent_shapes]
        (v,), _ = model(zs, rev=True, jac=False)  # FrEIA lets sampling skip the log-dets
        return _quantize(v)

    return Contestant(
        name=spec_name("freia", precision, channels_last),
        model=model,
        bits_per_dim=bpd,
        sample=sample,
        precision=peer_precision(cfg.device, precision),
        lr=cfg.lr,
    )


SPEC = re.compile(r"(?P<lib>msflow|normflows|freia)(?:\[(?P<precision>[a-z0-9-]+)\])?(?P<cl>\+cl)?")
PRECISIONS = ("float32", "bf16-mixed")


def spec_name(lib: str, precision: str = "float32", channels_last: bool = False) -> str:
    """``lib``, ``lib[bf16-mixed]``, ``lib+cl`` or ``lib[bf16-mixed]+cl``: a contestant's name."""
    return lib + ("" if precision == "float32" else f"[{precision}]") + ("+cl" if channels_last else "")


def parse_spec(spec: str) -> tuple[str, str, bool]:
    """``"freia[bf16-mixed]+cl"`` -> ``("freia", "bf16-mixed", True)``; raises on anything else.

    msflow is always channels-last (its models are built so), so ``+cl`` is for the peers.
    """
    match = SPEC.fullmatch(spec)
    precision = (match["precision"] or "float32") if match else None
    if match is None or precision not in PRECISIONS or (match["lib"] == "msflow" and match["cl"]):
        raise ValueError(
            f"unknown contestant {spec!r}; use msflow, normflows or freia, optionally with [bf16-mixed], "
            "and +cl (channels-last) for a peer"
        )
    return match["lib"], precision, bool(match["cl"])


def build_contestant(spec: str, cfg: BenchConfig) -> Contestant:
    """A contestant from its spec (:func:`parse_spec`): ``"msflow"``, ``"normflows[bf16-mixed]+cl"``, ..."""
    lib, precision, channels_last = parse_spec(spec)
    if lib == "normflows":
        return build_normflows(cfg, precision, channels_last)
    if lib == "freia":
        return build_freia(cfg, precision, channels_last)
    return build_msflow(cfg, precision)


def contestant_specs(precisions: list[str], layouts: str = "both") -> list[str]:
    """msflow and both peers in every precision; each peer in ``layouts`` ("both", "contiguous" or
    "channels_last"). The peers' best layout per phase is picked after timing (:func:`best_peer`)."""
    cls = {"both": (False, True), "contiguous": (False,), "channels_last": (True,)}[layouts]
    return [spec_name("msflow", p) for p in precisions] + [
        spec_name(lib, p, cl) for p in precisions for lib in PEERS for cl in cls
    ]


# --------------------------------------------------------------------------- phases
# Each step returns its loss (or the mean sample value) as a tensor: turning it into a Python
# number would synchronise a GPU after every step.


def train_step(c: Contestant, x: Tensor) -> Tensor:
    c.optimizer.zero_grad(set_to_none=True)
    with c.precision():
        loss = c.bits_per_dim(x).mean()
    loss.backward()
    c.optimizer.step()
    return loss.detach()


def eval_step(c: Contestant, x: Tensor) -> Tensor:
    with torch.inference_mode(), c.precision():
        return c.bits_per_dim(x).mean()


def sample_step(c: Contestant, x: Tensor) -> Tensor:
    with torch.inference_mode(), c.precision():
        return c.sample(x.shape[0]).float().mean()


STEPS: dict[str, Callable[[Contestant, Tensor], Tensor]] = {
    "train": train_step,
    "eval": eval_step,
    "sample": sample_step,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def time_phases(cfg: BenchConfig, contestants: list[Contestant], batches: list[Tensor]) -> dict[str, Any]:
    """Images/s per contestant and phase: interleaved repeats, warm-up excluded.

    Besides wall-clock throughput it records images per CPU-second of this process
    (``time.process_time``), which is less sensitive to other processes stealing the cores.
    """
    device = batches[0].device
    wall: dict[str, dict[str, list[float]]] = {c.name: {p: [] for p in PHASES} for c in contestants}
    cpu: dict[str, dict[str, list[float]]] = {c.name: {p: [] for p in PHASES} for c in contestants}
    last: dict[str, dict[str, float]] = {c.name: {} for c in contestants}
    for phase in PHASES:
        step = STEPS[phase]
        for c in contestants:
            for i in range(cfg.warmup):
                step(c, batches[i % len(batches)])
        for r in range(cfg.repeats):
            for c in contestants if r % 2 == 0 else contestants[::-1]:
                _sync(device)
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for i in range(cfg.iters):
                    value = step(c, batches[(r * cfg.iters + i) % len(batches)])
                _sync(device)
                wall_s, cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
                images = cfg.iters * cfg.batch
                wall[c.name][phase].append(images / wall_s)
                cpu[c.name][phase].append(images / max(cpu_s, 1e-9))
                last[c.name][phase] = value.item()
    return {
        c.name: {
            p: _summary(wall[c.name][p])
            | {
                "cpu_median": statistics.median(cpu[c.name][p]),
                "cpu_samples": cpu[c.name][p],
                "last_value": last[c.name][p],
            }
            for p in PHASES
        }
        for c in contestants
    }


# --------------------------------------------------------------------------- memory


def memory_worker(cfg: BenchConfig, spec: str, phase: str, batches_path: str | None = None) -> dict[str, Any]:
    """Run in a fresh process: peak RSS of ``memory_iters`` steps of ``phase`` over the RSS before."""
    torch.set_num_threads(cfg.threads)
    batches = torch.load(batches_path) if batches_path else make_batches(cfg)
    c = build_contestant(spec, cfg)
    # One small-batch step first, so one-time costs (thread pools, kernel caches, the autograd
    # engine, Adam's state) are not counted and the delta is what the batch itself needs.
    small = batches[0][: min(8, cfg.batch)]
    c.initialize(small)
    STEPS[phase](c, small)

    def full_batch_steps() -> None:
        for i in range(cfg.memory_iters):
            STEPS[phase](c, batches[i % len(batches)])

    return measure_peak(full_batch_steps)


def measure_memory(cfg: BenchConfig, spec: str, phase: str, batches_path: str | None = None) -> dict[str, Any]:
    """Median of ``memory_repeats`` fresh-process measurements (the allocator varies by a few MiB).

    ``batches_path``: the batches saved with ``torch.save``, so that workers neither parse the
    dataset again nor see other images.
    """
    args = ["--_memory-worker", spec, phase, "--_config", json.dumps(dataclasses.asdict(cfg))]
    cmd = worker_command(__file__, *args, *(["--_batches", batches_path] if batches_path else []))
    return median_of_processes(cmd, cfg.memory_repeats, f"{spec}/{phase}")


def measure_memory_cuda(cfg: BenchConfig, c: Contestant, phase: str, batches: list[Tensor]) -> dict[str, Any]:
    """Median of ``memory_repeats`` in-process measurements of ``memory_iters`` full-batch steps.

    The contestant has been timed already; one more full-batch step makes sure that cuDNN's
    workspaces and Adam's state exist before the peak counter is reset.
    """
    STEPS[phase](c, batches[0])

    def full_batch_steps() -> None:
        for i in range(cfg.memory_iters):
            STEPS[phase](c, batches[i % len(batches)])

    return median_run([measure_cuda_peak(full_batch_steps, batches[0].device) for _ in range(cfg.memory_repeats)])


# --------------------------------------------------------------------------- run + report


def _version(package: str) -> str:
    """The installed distribution's version, else the module's ``__version__`` (a copy on ``PYTHONPATH``)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(importlib.import_module(package), "__version__", "?"))


def environment(device: str) -> dict[str, Any]:
    """Versions and the hardware the figures belong to."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "normflows": _version("normflows"),
        "FrEIA": _version("FrEIA"),
        "msflow": _version("msflow"),
        "python": platform.python_version(),
        "device": device,
        "cpu": cpu_name(),
        "cpu_bf16_units": cpu_bf16_units(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.device(device).type == "cuda":
        env |= {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        }
    return env


def best_peer(throughput: dict[str, Any], lib: str, precision: str, phase: str) -> str:
    """The spec of ``lib`` in ``precision`` that ran ``phase`` fastest (median): its best layout."""
    specs = [s for s in throughput if parse_spec(s)[:2] == (lib, precision)]
    return max(specs, key=lambda s: throughput[s][phase]["median"])


def _ratios(throughput: dict[str, Any], mem: dict[str, Any], spec: str, peer: str, phase: str) -> dict[str, Any]:
    """msflow variant / peer: > 1 is faster for throughputs, < 1 is leaner for memory."""
    ms, other = throughput[spec][phase], throughput[peer][phase]
    # Repeat r of both ran back to back, so their quotient cancels slow drifts in machine load.
    paired = [a / b for a, b in zip(ms["samples"], other["samples"], strict=True)]
    m, b = mem.get(spec, {}).get(phase), mem.get(peer, {}).get(phase)
    return {
        "peer_spec": peer,
        "throughput": ms["median"] / other["median"],
        "throughput_paired": statistics.median(paired),
        "paired_samples": paired,
        "paired_min": min(paired),
        "paired_max": max(paired),
        "cpu_throughput": ms["cpu_median"] / other["cpu_median"],
        "peak_memory": m["peak_delta_mib"] / b["peak_delta_mib"] if m and b else None,
    }


def flops_per_image(c: Contestant, x: Tensor) -> dict[str, float]:
    """Floating-point operations per image of each phase (``FlopCounterMode``: convolutions and matmuls).

    Training is counted as forward plus backward without the optimizer step, so counting does not
    change the weights.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for phase in PHASES:
        with FlopCounterMode(display=False) as counter:
            if phase == "train":
                with c.precision():
                    c.bits_per_dim(x).mean().backward()
                c.optimizer.zero_grad(set_to_none=True)
            else:
                STEPS[phase](c, x)
        counts[phase] = counter.get_total_flops() / x.shape[0]
    return counts


def reference_conv_gflops(cfg: BenchConfig, repeats: int = 10) -> float:
    """The device's float32 speed on this workload's largest convolution, in GFLOP/s.

    A 3x3 ``hidden -> hidden`` convolution at the first level's resolution (``side / 2``), batch
    ``cfg.batch``, channels-last, forward only: the shape that most of a coupling net's work has
    and the one that runs closest to the float32 limit. It bounds what any float32 Glow of this
    architecture can reach.
    """
    device = torch.device(cfg.device)
    side = cfg.image_shape[1] // 2
    conv = nn.Conv2d(cfg.hidden, cfg.hidden, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.randn(cfg.batch, cfg.hidden, side, side, device=device).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            conv(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            conv(x)
        _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    return 2 * cfg.batch * cfg.hidden * cfg.hidden * 9 * side * side / seconds / 1e9


def run_workload(cfg: BenchConfig, specs: list[str], memory: bool = True) -> dict[str, Any]:
    """Time (and optionally measure the memory of) every contestant on one workload.

    Each peer may run in two layouts; the ratios are against its faster one in each phase, and
    memory is measured for that one only.
    """
    start = time.perf_counter()
    device = torch.device(cfg.device)
    cpu_batches = make_batches(cfg)
    batches = [b.to(device) for b in cpu_batches]
    contestants = [build_contestant(s, cfg) for s in specs]
    models = {c.name: {"params": c.num_params(), "bpd_at_init": c.initialize(batches[0])} for c in contestants}
    for c in contestants:
        c.check_device(batches[0])
    loadavg = [list(os.getloadavg())]
    throughput = time_phases(cfg, contestants, batches)
    loadavg.append(list(os.getloadavg()))
    for c in contestants:
        models[c.name]["bpd_after_timing"] = throughput[c.name]["eval"]["last_value"]
        if parse_spec(c.name)[1] == "float32":
            models[c.name]["flops_per_image"] = flops_per_image(c, batches[0])
    reference = reference_conv_gflops(cfg)
    variants = [s for s in specs if parse_spec(s)[0] == "msflow"]
    best = {
        v: {lib: {p: best_peer(throughput, lib, parse_spec(v)[1], p) for p in PHASES} for lib in PEERS}
        for v in variants
    }
    measured = {(s, p) for p in PHASES for s in variants} | {
        (best[v][lib][p], p) for v in variants for lib in PEERS for p in PHASES
    }
    mem: dict[str, Any] = {}
    if memory and device.type == "cuda":
        for c in contestants:
            for p in PHASES:
                if (c.name, p) in measured:
                    mem.setdefault(c.name, {})[p] = measure_memory_cuda(cfg, c, p, batches)
    del contestants
    if memory and device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "batches.pt")
            torch.save(cpu_batches, path)
            for s in specs:
                for p in PHASES:
                    if (s, p) in measured:
                        mem.setdefault(s, {})[p] = measure_memory(cfg, s, p, path)
    ratios = {
        v: {lib: {p: _ratios(throughput, mem, v, best[v][lib][p], p) for p in PHASES} for lib in PEERS}
        for v in variants
    }
    return {
        "config": dataclasses.asdict(cfg),
        "models": models,
        "throughput": throughput,
        "memory": mem,
        "ratios": ratios,
        "reference_conv_gflops": reference,
        "loadavg_timing": loadavg,
        "wall_s": time.perf_counter() - start,
    }


def run_benchmark(
    cfgs: list[BenchConfig], precision: str = "float32", memory: bool = True, layouts: str = "both"
) -> dict[str, Any]:
    """Every workload of ``cfgs`` (one device for all); returns the JSON report.

    ``precision="bf16-mixed"`` adds msflow's bf16-mixed subnets and both peers under bf16 autocast
    to the float32 contestants; ``layouts``: the peers' memory layouts to try (see
    :func:`contestant_specs`).
    """
    device = torch.device(cfgs[0].device)
    if device.type == "cuda":
        # For every contestant alike: the two lines a GPU user of any of these libraries would add.
        # TF32 rounds the inputs of every matmul and convolution (the invertible 1x1 ones too).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(cfgs[0].threads)
    precisions = ["float32"] + ([precision] if precision != "float32" else [])
    specs = contestant_specs(precisions, layouts)
    env = environment(cfgs[0].device) | {"loadavg_before": list(os.getloadavg()), "peer_layouts": layouts}
    start = time.perf_counter()
    workloads = {cfg.workload: run_workload(cfg, specs, memory) for cfg in cfgs}
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    return {"environment": env, "workloads": workloads, "differences": ARCHITECTURE_DIFFERENCES}


ARCHITECTURE_DIFFERENCES = {
    "same": (
        "levels, steps, squeeze -> [ActNorm, 1x1 conv, affine coupling] -> split order, coupling nets "
        "(conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-init conv3x3, in-place ReLUs in all three), "
        "log-scale log sigmoid(h + 2), dequantization v = (x + u)/256 - 1/2, bits/dim formula"
    ),
    "normflows": (
        "split priors: learned per-channel Gaussians, as msflow's split_prior='channelwise' (with a "
        "logscale_factor re-parametrisation); its coupling computes (x_b - t) * sigmoid(h + 2) in the density "
        "direction where msflow computes x_b * sigmoid(h + 2) + t, and its squeeze orders channels differently: "
        "the same function class and arithmetic, but no copy of weights maps one onto the other; it returns "
        "log q with every sample"
    ),
    "freia": (
        "computes msflow's function at equal weights when msflow's split priors are at their initial identity "
        "and FrEIA's fixed 1x1 convs are set to msflow's W (tests/test_benchmarks.py); otherwise: 1x1 convs: "
        "fixed random rotations (Fixed1x1Conv; FrEIA 0.2 has no learned one); no split priors "
        "(latents scored by N(0, I)); squeeze: a strided 0/1 convolution (IRevNetDownsampling, "
        "pixel_unshuffle's channel order); its graph runs node by node in Python"
    ),
    "bf16": (
        "msflow's bf16-mixed runs only its subnets under bf16 autocast (the invertible arithmetic, 1x1 "
        "convs and log-dets stay float32); the peers' bf16 rows run their whole model under "
        "torch.autocast(bfloat16), the one line their users have, which also rounds their 1x1 convolutions"
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="few repeats (~2.5 minutes on 2 idle CPU cores)")
    size.add_argument("--smoke", action="store_true", help="tiny model, one step (tests)")
    parser.add_argument(
        "--shape", default="all", choices=[*WORKLOADS, "all"], help="workload(s): 3x32x32 patches, 1x28x28 MNIST"
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "bf16-mixed"],
        help="also time msflow with subnets in this precision and the peers under bf16 autocast (extra rows)",
    )
    parser.add_argument(
        "--peer-layouts",
        default="both",
        choices=["both", "contiguous", "channels_last"],
        help="the peers' memory layouts to time; with 'both' each peer is compared in its faster one per phase",
    )
    parser.add_argument("--device", default="cpu", help="'cpu' (default) or 'cuda[:N]': every model and batch there")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default 2); ignored on CUDA")
    parser.add_argument("--batch", type=int, help="images per step (default 64)")
    parser.add_argument("--repeats", type=int, help="override the number of timed repeats")
    parser.add_argument("--iters", type=int, help="override the steps per timed repeat")
    parser.add_argument("--_memory-worker", nargs=2, metavar=("SPEC", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    parser.add_argument("--_batches", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory_worker:
        raw = json.loads(args._config)
        cfg = BenchConfig(**(raw | {"image_shape": tuple(raw["image_shape"])}))
        print(json.dumps(memory_worker(cfg, *args._memory_worker, args._batches)))
        return 0

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: use 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")

    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    overrides = {"threads": args.threads, "batch": args.batch, "repeats": args.repeats, "iters": args.iters}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    shapes = list(WORKLOADS) if args.shape == "all" else [args.shape]
    cfgs = [make_config(preset, shape, args.device, **overrides) for shape in shapes]
    report = run_benchmark(cfgs, precision=args.precision, memory=not args.no_memory, layouts=args.peer_layouts)
    print(markdown_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
