"""Peer benchmark: msflow's Glow against normflows' Glow of the same architecture, on the CPU.

One command times three phases for both libraries and prints throughput ratios
(msflow / normflows; above 1 means msflow is faster) and peak-memory ratios:

- ``train``: dequantize uint8 images, bits/dim, backward, Adam step (images/s);
- ``eval``: bits/dim under ``torch.inference_mode`` (images/s);
- ``sample``: draw a batch of uint8 images at temperature 1 (images/s).

How it measures (see benchmarks/README.md for why):

- Timing runs both libraries in one process on the same batches, **interleaved**: each repeat
  times ``iters`` steps of every contestant, alternating which goes first, so a change in
  machine load hits both sides alike. Warm-up steps (and ActNorm's data-dependent
  initialisation) are excluded; the reported figure is the median over repeats.
- Peak memory is measured in a **fresh subprocess per (library, phase)**: the model is built,
  initialised and run once on a small batch (so one-time costs are paid), freed heap is
  returned to the OS (``malloc_trim``), the kernel's RSS high-water mark is reset
  (``/proc/self/clear_refs``), ``memory_iters`` full-batch steps run, and the peak RSS
  (``VmHWM``) minus the RSS before them is reported: the extra resident memory the phase needs
  at this batch size (activations, gradients, temporaries); median of ``memory_repeats``
  such processes.

Usage::

    python benchmarks/peers.py --quick --json quick.json      # 1-4 minutes
    python benchmarks/peers.py --json peers.json              # full run: 3-12 minutes
    python benchmarks/peers.py --precision bf16-mixed         # + msflow bf16-mixed subnets row
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from _memory import cpu_name, measure_peak, median_of_processes, worker_command
from torch import Tensor, nn

PHASES = ("train", "eval", "sample")
BASELINE = "normflows"


@dataclass(frozen=True)
class BenchConfig:
    """Architecture, workload and repetition counts of one benchmark run."""

    image_shape: tuple[int, int, int] = (3, 32, 32)
    levels: int = 3
    steps: int = 8
    hidden: int = 128
    batch: int = 64
    threads: int = 2
    data: str = "patches32"  # or "random" (uniform uint8 noise)
    num_batches: int = 4  # distinct batches cycled through by every phase
    warmup: int = 2  # untimed steps per (contestant, phase)
    repeats: int = 15  # timed repeats; the median is reported
    iters: int = 2  # steps per timed repeat
    memory_iters: int = 2  # full-batch steps run while measuring peak memory
    memory_repeats: int = 3  # fresh processes per (contestant, phase); the median is reported
    lr: float = 1e-3
    seed: int = 0


PRESETS: dict[str, BenchConfig] = {
    "full": BenchConfig(),  # ~15 repeats x 2 steps per phase and library
    "quick": BenchConfig(warmup=1, repeats=3, iters=1, memory_iters=1, memory_repeats=1),
    # Tiny model and data for tests: exercises every code path in seconds. One thread, because
    # two OpenMP threads on a busy machine can make tiny ops ~100x slower (spinning barriers).
    "smoke": BenchConfig(
        image_shape=(3, 8, 8),
        threads=1,
        levels=2,
        steps=1,
        hidden=8,
        batch=4,
        data="random",
        num_batches=2,
        warmup=1,
        repeats=1,
        iters=1,
        memory_iters=1,
        memory_repeats=1,
    ),
}


# --------------------------------------------------------------------------- data


def make_batches(cfg: BenchConfig) -> list[Tensor]:
    """``num_batches`` seeded uint8 batches: bundled photo patches, or noise for other shapes."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = cfg.num_batches * cfg.batch
    if cfg.data == "patches32":
        from msflow.data import get_dataset

        images = get_dataset("patches32", "train").images
        if tuple(images.shape[1:]) != cfg.image_shape:
            raise ValueError(
                f"patches32 images are {tuple(images.shape[1:])}, not {cfg.image_shape}; use data='random'"
            )
        idx = torch.randperm(images.shape[0], generator=gen)[:n]
        if idx.numel() < n:
            idx = idx.repeat(math.ceil(n / idx.numel()))[:n]
        images = images[idx]
    elif cfg.data == "random":
        images = torch.randint(0, 256, (n, *cfg.image_shape), generator=gen, dtype=torch.uint8)
    else:
        raise ValueError(f"unknown data {cfg.data!r}; use 'patches32' or 'random'")
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
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def initialize(self, x: Tensor) -> float:
        """Run ActNorm's data-dependent initialisation (both libraries do it on the first call)."""
        with self.precision():
            return self.bits_per_dim(x).mean().item()


def build_msflow(cfg: BenchConfig, precision: str = "float32") -> Contestant:
    """msflow's Glow preset: squeeze -> steps x [ActNorm, LU 1x1, affine coupling] -> split prior."""
    from msflow.models.glow import glow
    from msflow.nn import subnet_precision

    torch.manual_seed(cfg.seed)
    model = glow(cfg.image_shape, levels=cfg.levels, steps=cfg.steps, hidden=cfg.hidden, preprocess="center")
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


def build_normflows(cfg: BenchConfig) -> Contestant:
    """normflows' Glow, fed exactly what msflow computes internally: v = (x + u) / 256 - 1/2."""
    from msflow.metrics.bpd import bits_per_dim

    torch.manual_seed(cfg.seed)
    with warnings.catch_warnings():
        # normflows' LU 1x1 conv calls the deprecated torch.lu once per block at build time.
        warnings.filterwarnings("ignore", message=".*torch.lu is deprecated.*")
        model = normflows_glow(cfg)
    num_dims = math.prod(cfg.image_shape)

    def bpd(x: Tensor) -> Tensor:
        v = (x.to(torch.float32) + torch.rand(x.shape)) / 256.0 - 0.5
        return bits_per_dim(model.log_prob(v, None), num_dims)

    def sample(n: int) -> Tensor:
        v, _ = model.sample(n)  # normflows always returns log q too; that cost is part of its API
        return ((v + 0.5) * 256.0).floor().clamp(0, 255).to(torch.uint8)

    return Contestant(name="normflows", model=model, bits_per_dim=bpd, sample=sample, lr=cfg.lr)


def build_contestant(spec: str, cfg: BenchConfig) -> Contestant:
    """``"msflow"``, ``"msflow[bf16-mixed]"`` or ``"normflows"``."""
    if spec == "normflows":
        return build_normflows(cfg)
    match = re.fullmatch(r"msflow(?:\[(.+)\])?", spec)
    if match is None:
        raise ValueError(f"unknown contestant {spec!r}")
    return build_msflow(cfg, match.group(1) or "float32")


# --------------------------------------------------------------------------- phases


def train_step(c: Contestant, x: Tensor) -> float:
    c.optimizer.zero_grad(set_to_none=True)
    with c.precision():
        loss = c.bits_per_dim(x).mean()
    loss.backward()
    c.optimizer.step()
    return loss.item()


def eval_step(c: Contestant, x: Tensor) -> float:
    with torch.inference_mode(), c.precision():
        return c.bits_per_dim(x).mean().item()


def sample_step(c: Contestant, x: Tensor) -> float:
    with torch.inference_mode(), c.precision():
        return c.sample(x.shape[0]).float().mean().item()


STEPS: dict[str, Callable[[Contestant, Tensor], float]] = {
    "train": train_step,
    "eval": eval_step,
    "sample": sample_step,
}


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": values}


def time_phases(cfg: BenchConfig, contestants: list[Contestant], batches: list[Tensor]) -> dict[str, Any]:
    """Images/s per contestant and phase: interleaved repeats, warm-up excluded.

    Besides wall-clock throughput it records images per CPU-second of this process
    (``time.process_time``), which is less sensitive to other processes stealing the cores.
    """
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
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for i in range(cfg.iters):
                    last[c.name][phase] = step(c, batches[(r * cfg.iters + i) % len(batches)])
                images = cfg.iters * cfg.batch
                wall[c.name][phase].append(images / (time.perf_counter() - wall0))
                cpu[c.name][phase].append(images / max(time.process_time() - cpu0, 1e-9))
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


def memory_worker(cfg: BenchConfig, spec: str, phase: str) -> dict[str, Any]:
    """Run in a fresh process: peak RSS of ``memory_iters`` steps of ``phase`` over the RSS before."""
    torch.set_num_threads(cfg.threads)
    batches = make_batches(cfg)
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


def measure_memory(cfg: BenchConfig, spec: str, phase: str) -> dict[str, Any]:
    """Median of ``memory_repeats`` fresh-process measurements (the allocator varies by a few MiB)."""
    config = json.dumps(dataclasses.asdict(cfg))
    cmd = worker_command(__file__, "--_memory-worker", spec, phase, "--_config", config)
    return median_of_processes(cmd, cfg.memory_repeats, f"{spec}/{phase}")


# --------------------------------------------------------------------------- run + report


def _environment() -> dict[str, Any]:
    import normflows

    import msflow

    return {
        "torch": torch.__version__,
        "normflows": getattr(normflows, "__version__", "?"),
        "msflow": getattr(msflow, "__version__", "?"),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
    }


def _ratios(throughput: dict[str, Any], mem: dict[str, Any], spec: str, phase: str) -> dict[str, float | None]:
    """msflow variant / normflows: > 1 is faster for throughputs, < 1 is leaner for memory."""
    ms, nf = throughput[spec][phase], throughput[BASELINE][phase]
    # Repeat r of both ran back to back, so their quotient cancels slow drifts in machine load.
    paired = statistics.median(a / b for a, b in zip(ms["samples"], nf["samples"], strict=True))
    peak = mem[spec][phase]["peak_delta_mib"] / mem[BASELINE][phase]["peak_delta_mib"] if mem else None
    return {
        "throughput": ms["median"] / nf["median"],
        "throughput_paired": paired,
        "cpu_throughput": ms["cpu_median"] / nf["cpu_median"],
        "peak_memory": peak,
    }


def run_benchmark(cfg: BenchConfig, precision: str = "float32", memory: bool = True) -> dict[str, Any]:
    """Time (and optionally measure memory of) every contestant; returns the JSON report."""
    torch.set_num_threads(cfg.threads)
    specs = ["msflow", BASELINE] + ([f"msflow[{precision}]"] if precision != "float32" else [])
    env = _environment() | {"threads": cfg.threads, "loadavg_before": list(os.getloadavg())}
    batches = make_batches(cfg)
    contestants = [build_contestant(s, cfg) for s in specs]
    models = {c.name: {"params": c.num_params(), "bpd_at_init": c.initialize(batches[0])} for c in contestants}
    start = time.perf_counter()
    throughput = time_phases(cfg, contestants, batches)
    for c in contestants:
        models[c.name]["bpd_after_timing"] = throughput[c.name]["eval"]["last_value"]
    del contestants
    mem = {s: {p: measure_memory(cfg, s, p) for p in PHASES} for s in specs} if memory else {}
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    ratios = {s: {p: _ratios(throughput, mem, s, p) for p in PHASES} for s in specs if s != BASELINE}
    return {
        "config": dataclasses.asdict(cfg),
        "environment": env,
        "models": models,
        "throughput": throughput,
        "memory": mem,
        "ratios": ratios,
    }


def _fmt_rate(t: dict[str, Any]) -> str:
    return f"{t['median']:.1f} [{t['min']:.0f}-{t['max']:.0f}]"


def markdown_table(report: dict[str, Any]) -> str:
    """The main table: one row per (phase, msflow variant), normflows fp32 as the reference."""
    cfg, env, thr, mem = report["config"], report["environment"], report["throughput"], report["memory"]
    lines = [
        f"Glow {'x'.join(map(str, cfg['image_shape']))}, {cfg['levels']} levels x {cfg['steps']} steps, "
        f"hidden {cfg['hidden']}, batch {cfg['batch']}, {env['threads']} threads, data {cfg['data']}; "
        f"torch {env['torch']}, normflows {env['normflows']}; {env['cpu']}; "
        f"load average {env['loadavg_before'][0]:.2f} -> {env['loadavg_after'][0]:.2f}",
        "",
        "| phase | msflow variant | msflow img/s | normflows img/s | **speed ratio** | paired ratio "
        "| CPU-time ratio | msflow peak MiB | normflows peak MiB | memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in PHASES:
        for name, r in report["ratios"].items():
            label = "fp32 (main result)" if name == "msflow" else f"{name[7:-1]} subnets (extra row)"
            m, b = mem.get(name, {}).get(phase), mem.get(BASELINE, {}).get(phase)
            mem_cols = (
                f"{m['peak_delta_mib']:.0f} | {b['peak_delta_mib']:.0f} | {r[phase]['peak_memory']:.2f}"
                if m and b
                else "- | - | -"
            )
            lines.append(
                f"| {phase} | {label} | {_fmt_rate(thr[name][phase])} | {_fmt_rate(thr[BASELINE][phase])} "
                f"| **{r[phase]['throughput']:.2f}** | {r[phase]['throughput_paired']:.2f} "
                f"| {r[phase]['cpu_throughput']:.2f} | {mem_cols} |"
            )
    lines += [
        "",
        "Speed ratio = median msflow img/s / median normflows img/s (> 1: msflow faster); [min-max] over "
        f"{cfg['repeats']} interleaved repeats of {cfg['iters']} step(s), {cfg['warmup']} warm-up step(s) excluded. "
        "Paired ratio: median over repeats of the ratio within a repeat (both ran back to back). "
        "Peak MiB = extra resident memory of the phase (peak RSS minus RSS before, fresh process per "
        f"library and phase, after one small-batch step; median of {cfg['memory_repeats']} process(es)); "
        "memory ratio < 1: msflow uses less. CPU-time ratio: "
        "the same ratio on images per CPU-second of the process, less sensitive to other load. Parameters: "
        + ", ".join(f"{k} {v['params'] / 1e6:.2f}M" for k, v in report["models"].items())
        + ". Architecture differences: msflow's split priors are conditioned on the kept half by a zero-init "
        "3x3 conv (normflows' GlowBase split priors are unconditional per-channel Gaussians); normflows' "
        "coupling nets use LeakyReLU(0), the same function as ReLU but its backward keeps the pre-activation; "
        "normflows returns log q with every sample; otherwise the steps match (see benchmarks/README.md).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="few repeats (1-4 minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny model, one step (tests)")
    parser.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "bf16-mixed"],
        help="also time msflow with subnets in this precision (an extra row; fp32 stays the main result)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, help="override the number of timed repeats")
    parser.add_argument("--_memory-worker", nargs=2, metavar=("SPEC", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory_worker:
        raw = json.loads(args._config)
        cfg = BenchConfig(**(raw | {"image_shape": tuple(raw["image_shape"])}))
        print(json.dumps(memory_worker(cfg, *args._memory_worker)))
        return 0

    cfg = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides = {k: v for k, v in {"threads": args.threads, "repeats": args.repeats}.items() if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    report = run_benchmark(cfg, precision=args.precision, memory=not args.no_memory)
    print(markdown_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
