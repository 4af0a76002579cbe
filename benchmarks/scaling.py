"""Scaling study: time per image and peak memory against the image side, for Glow and MRCNF.

For image sides 32, 64, 128 and 256 (256 with gradient checkpointing, 128 with and without it)
and two model families, one command measures three phases on a fixed batch of uint8 images:

- ``train``: dequantize, bits/dim (plus MRCNF's RNODE regularizers), ``.mean().backward()``,
  Adam step;
- ``eval``: bits/dim under ``torch.inference_mode`` (under ``torch.no_grad`` for MRCNF, whose
  trace estimate needs autograd: ``model.density_needs_autograd``);
- ``sample``: draw a batch of uint8 images at temperature 1 under ``torch.inference_mode``;

and prints a markdown table (hardware line on top), writes a JSON report and a log-log plot.

The models grow with the side as a user would configure them: ``log2(side) - 2`` levels
(Glow) or resolutions (MRCNF), the count of both families' 32x32 presets (3) plus one per
doubling, so the coarsest scale keeps its size (Glow 4x4 latents, MRCNF an 8x8 top image) and
each doubling adds one level of the same kind. Steps per level and widths are fixed.

How it measures (see benchmarks/README.md):

- **Time**: per (family, point, phase), ``warmup`` untimed calls (ActNorm's data-dependent
  initialisation among them), then ``repeats`` timed calls; the median wall time per call
  divided by the batch is the time per image. CPU seconds of the process
  (``time.process_time``) are recorded too. On CUDA the device is synchronised before every
  timer read.
- **Peak memory**: on the CPU in a fresh process per (family, point), via
  ``benchmarks/_memory.py``: per phase (training first) one call, then ``malloc_trim``, an RSS
  high-water mark reset and one more call; peak RSS minus RSS before it. On CUDA in the
  benchmark process, ``torch.cuda.max_memory_allocated`` minus the memory allocated before the
  call.

Usage::

    python benchmarks/scaling.py --json scaling.json         # full run; writes docs/figures/scaling.png
    python benchmarks/scaling.py --quick                     # sides 32-128, 2 repeats
    python benchmarks/scaling.py --smoke --plot /tmp/s.png   # tiny models (tests)
    python benchmarks/scaling.py --device cuda --batch 32    # on a GPU
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
from pathlib import Path
from typing import Any

import torch
from _memory import cpu_name, measure_peak, run_worker, worker_command
from torch import Tensor, nn

from msflow.core import set_gradient_checkpointing
from msflow.models.glow import glow
from msflow.models.mrcnf import mrcnf

FAMILIES = ("glow", "mrcnf")
PHASES = ("train", "eval", "sample")
DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "docs" / "figures" / "scaling.png"


@dataclass(frozen=True)
class BenchConfig:
    """Models, points, workload and repetition counts of one run."""

    families: tuple[str, ...] = FAMILIES
    # Image sides; a trailing "c" turns gradient checkpointing on for that point's training.
    points: tuple[str, ...] = ("32", "64", "128", "128c", "256c")
    glow_steps: int = 8  # Glow steps per level
    glow_hidden: int = 128  # channels of the coupling nets
    mrcnf_blocks: int = 1  # CNF blocks per resolution
    mrcnf_hidden: int = 64  # channels of the vector fields (MRCNF's own width)
    # One fixed-step solver for training and evaluation, so every point does the same number of
    # function evaluations whatever the (untrained) weights: one rk4 step = 4 per solve.
    mrcnf_solver: dict[str, Any] = field(default_factory=lambda: {"method": "rk4", "step_size": 1.0})
    batch: int = 4
    data: str = "photos"  # or "random" (uniform uint8 noise)
    device: str = "cpu"
    threads: int = 2
    warmup: int = 1  # untimed calls per (family, point, phase)
    repeats: int = 3  # timed calls; the median is reported
    memory_repeats: int = 1  # fresh processes per (family, point) on the CPU; the median
    lr: float = 1e-3
    seed: int = 0


PRESETS: dict[str, BenchConfig] = {
    "full": BenchConfig(),
    "quick": BenchConfig(points=("32", "64", "128", "128c"), repeats=2),
    # Tiny models for tests; one thread, because two OpenMP threads on a busy machine can make
    # tiny ops ~100x slower (spinning barriers).
    "smoke": BenchConfig(
        points=("16", "32c"),
        glow_steps=1,
        glow_hidden=8,
        mrcnf_hidden=8,
        data="random",
        threads=1,
        repeats=1,
    ),
}


def parse_point(point: str) -> tuple[int, bool]:
    """``"128c"`` -> ``(128, True)``: the side and whether training uses gradient checkpointing."""
    checkpointing = point.endswith("c")
    text = point[:-1] if checkpointing else point
    if not text.isdigit() or int(text) < 8 or int(text) & (int(text) - 1):
        raise ValueError(f"a point is a power-of-two image side >= 8, optionally followed by 'c', got {point!r}")
    return int(text), checkpointing


def levels_for(side: int) -> int:
    """Glow levels / MRCNF resolutions at ``side``: 3 at 32, one more per doubling."""
    return int(math.log2(side)) - 2


def phases_of(cfg: BenchConfig, point: str) -> tuple[str, ...]:
    """Phases measured at ``point``: gradient checkpointing acts in training only, so a
    checkpointed point measures evaluation and sampling only when its side has no plain point."""
    side, checkpointing = parse_point(point)
    if checkpointing and str(side) in cfg.points:
        return ("train",)
    return PHASES


# --------------------------------------------------------------------------- workload


def make_batch(cfg: BenchConfig, side: int) -> Tensor:
    """``batch`` seeded uint8 RGB images: ``side x side`` crops of the bundled training photos, or noise."""
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.data == "random":
        return torch.randint(0, 256, (cfg.batch, 3, side, side), generator=gen, dtype=torch.uint8)
    if cfg.data != "photos":
        raise ValueError(f"unknown data {cfg.data!r}; use 'photos' or 'random'")
    import numpy as np

    from msflow.data.bundled import cut_patches
    from msflow.data.photos import PHOTO_SPLIT, bundled_photos

    photos = bundled_photos()
    crops = np.concatenate([cut_patches(p, side) for n, p in photos.items() if PHOTO_SPLIT[n] == "train"])
    if len(crops) < cfg.batch:
        raise ValueError(f"the bundled photos give {len(crops)} {side}x{side} crops; use data='random'")
    index = torch.randperm(len(crops), generator=gen)[: cfg.batch]
    return torch.from_numpy(crops[index.numpy()])


def build_model(cfg: BenchConfig, family: str, side: int) -> nn.Module:
    """The family's model for ``3 x side x side`` images, seeded."""
    torch.manual_seed(cfg.seed)
    shape = (3, side, side)
    if family == "glow":
        return glow(shape, levels=levels_for(side), steps=cfg.glow_steps, hidden=cfg.glow_hidden)
    if family == "mrcnf":
        solver = {"train": cfg.mrcnf_solver, "eval": cfg.mrcnf_solver}
        return mrcnf(
            shape, resolutions=levels_for(side), steps=cfg.mrcnf_blocks, hidden=cfg.mrcnf_hidden, solver=solver
        )
    raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")


def describe_family(cfg: BenchConfig, family: str) -> str:
    if family == "glow":
        return (
            f"glow(levels=log2(side)-2, steps={cfg.glow_steps}, hidden={cfg.glow_hidden}): ActNorm, LU 1x1 conv, "
            "affine coupling; conditional split priors"
        )
    solver = ", ".join(f"{k}={v}" for k, v in cfg.mrcnf_solver.items())
    return (
        f"mrcnf(resolutions=log2(side)-2, steps={cfg.mrcnf_blocks}, hidden={cfg.mrcnf_hidden}): CNF blocks, "
        f"Hutchinson trace, RNODE weights 0.01, adjoint gradients; solver {solver} in training and evaluation"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Workload:
    """One model at one point, its Adam optimiser and batch; each phase runs one call."""

    def __init__(self, cfg: BenchConfig, family: str, point: str) -> None:
        side, checkpointing = parse_point(point)
        self.device = torch.device(cfg.device)
        self.model = set_gradient_checkpointing(build_model(cfg, family, side), checkpointing).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.x = make_batch(cfg, side).to(self.device)
        self.batch = cfg.batch
        self.last_bpd = float("nan")

    def initialize(self) -> None:
        """One density pass in training mode without gradients: ActNorm's data-dependent init."""
        self.model.train()
        with torch.no_grad():
            self.model.bits_per_dim(self.x)

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        bpd = self.model.bits_per_dim(self.x).mean()
        reg = self.model.regularization_loss() if hasattr(self.model, "regularization_loss") else 0.0
        (bpd + reg).backward()
        self.optimizer.step()
        self.last_bpd = bpd.item()

    def eval(self) -> None:
        self.model.eval()
        # A CNF's trace estimate differentiates its vector field: no inference_mode there.
        no_graph = torch.no_grad if getattr(self.model, "density_needs_autograd", False) else torch.inference_mode
        with no_graph():
            self.last_bpd = self.model.bits_per_dim(self.x).mean().item()

    def sample(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model.sample(self.batch)

    def run(self, phase: str) -> None:
        getattr(self, phase)()

    def nfe(self) -> int | None:
        """Vector-field evaluations so far (MRCNF), ``None`` for models without ODEs."""
        counts = self.model.nfe()  # a declared method of every image flow: None without ODEs
        return counts["total"] if counts is not None else None


# --------------------------------------------------------------------------- measurements


def time_phase(cfg: BenchConfig, work: Workload, phase: str) -> dict[str, Any]:
    """Wall and CPU seconds per call of ``phase``: warm-up excluded, median over repeats."""
    for _ in range(cfg.warmup):
        work.run(phase)
    wall: list[float] = []
    cpu: list[float] = []
    nfe0 = work.nfe()
    for _ in range(cfg.repeats):
        _sync(work.device)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        work.run(phase)
        _sync(work.device)
        wall.append(time.perf_counter() - wall0)
        cpu.append(time.process_time() - cpu0)
    nfe1 = work.nfe()
    median = statistics.median(wall)
    return {
        "median": median,
        "min": min(wall),
        "max": max(wall),
        "samples": wall,
        "cpu_median": statistics.median(cpu),
        "cpu_samples": cpu,
        "per_image_ms": 1000 * median / cfg.batch,
        # Function evaluations per call (forward and adjoint solves of every CNF block).
        "nfe_per_call": None if nfe0 is None else (nfe1 - nfe0) / cfg.repeats,
        "bits_per_dim": work.last_bpd if phase != "sample" else None,
    }


def cuda_peak(work: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak allocated CUDA memory while ``work()`` runs over the memory allocated before, in MiB."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) / 2**20
    work()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    return {"allocated_before_mib": before, "peak_allocated_mib": peak, "peak_delta_mib": peak - before}


def memory_worker(cfg: BenchConfig, family: str, point: str) -> dict[str, dict[str, Any]]:
    """Run in a fresh process: the extra peak RSS of one call of each phase at ``point``.

    Training goes first, measured as in ``checkpointing.py`` (one step, then the measured step);
    evaluation and sampling follow in the same process, each after one untimed call. Between
    phases :func:`measure_peak` returns freed heap to the OS and resets the high-water mark, so
    each figure is the pages its own call touches beyond what is resident before it.
    """
    torch.set_num_threads(cfg.threads)
    work = Workload(cfg, family, point)
    peaks = {}
    for phase in phases_of(cfg, point):
        # One call first: thread pools, oneDNN kernels, the autograd engine and Adam's state are
        # then paid for, and the delta is what the call itself needs (activations, temporaries).
        work.run(phase)
        peaks[phase] = measure_peak(lambda p=phase: work.run(p))
    return peaks


def measure_memory_cpu(cfg: BenchConfig, family: str, point: str) -> dict[str, dict[str, Any]]:
    """Per phase, the median of ``memory_repeats`` fresh-process runs of :func:`memory_worker`."""
    config = json.dumps(dataclasses.asdict(cfg))
    cmd = worker_command(__file__, "--_memory-worker", f"{family}:{point}", "--_config", config)
    runs = [run_worker(cmd, f"{family} {point}") for _ in range(cfg.memory_repeats)]
    medians = {}
    for phase in runs[0]:
        middle = sorted(runs, key=lambda run: run[phase]["peak_delta_mib"])[(len(runs) - 1) // 2]
        medians[phase] = middle[phase] | {"peak_delta_mib_samples": [run[phase]["peak_delta_mib"] for run in runs]}
    return medians


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_point(cfg: BenchConfig, family: str, point: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Model facts and one record per phase at ``point`` (times; CUDA memory in this process)."""
    side, checkpointing = parse_point(point)
    work = Workload(cfg, family, point)
    model = {"side": side, "levels": levels_for(side), "params": sum(p.numel() for p in work.model.parameters())}
    records = []
    for phase in phases_of(cfg, point):
        timing = time_phase(cfg, work, phase)
        record = {
            "family": family,
            "point": point,
            "side": side,
            # Gradient checkpointing acts only while gradients are recorded, i.e. in training.
            "checkpointing": checkpointing if phase == "train" else None,
            "phase": phase,
            "time": timing,
        }
        if work.device.type == "cuda":
            record["memory"] = cuda_peak(lambda p=phase: work.run(p), work.device)
        records.append(record)
        _log(f"{family} {point:>5} {phase:<6} {timing['per_image_ms']:9.1f} ms/image")
    return model, records


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Time every (family, point, phase), then measure memory; returns the JSON report."""
    torch.set_num_threads(cfg.threads)
    env = _environment(cfg)
    start = time.perf_counter()
    models: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    for family in cfg.families:
        models[family] = {"description": describe_family(cfg, family), "sides": {}}
        for point in cfg.points:
            model, point_records = measure_point(cfg, family, point)
            models[family]["sides"][str(model["side"])] = model
            records += point_records
    if cfg.device == "cpu":
        for family in cfg.families:
            for point in cfg.points:
                peaks = measure_memory_cpu(cfg, family, point)
                for record in records:
                    if (record["family"], record["point"]) == (family, point):
                        record["memory"] = peaks[record["phase"]]
                _log(
                    f"{family} {point:>5} "
                    + ", ".join(f"{k} {v['peak_delta_mib']:.1f}" for k, v in peaks.items())
                    + " MiB"
                )
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    return {"config": dataclasses.asdict(cfg), "environment": env, "models": models, "records": records}


def _environment(cfg: BenchConfig) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": cfg.threads,
        "device": cfg.device,
        "loadavg_before": list(os.getloadavg()),
    }
    if cfg.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(cfg.device))
    return env


# --------------------------------------------------------------------------- report


def hardware_line(report: dict[str, Any]) -> str:
    env = report["environment"]
    if env["device"] == "cuda":
        return f"GPU: {env['gpu']} (CPU {env['cpu']}); torch {env['torch']}"
    return (
        f"CPU: {env['cpu']}, {env['threads']} torch threads ({env['cpu_count']} cores); torch {env['torch']}; "
        f"load average {env['loadavg_before'][0]:.2f} -> {env['loadavg_after'][0]:.2f}"
    )


def markdown_table(report: dict[str, Any]) -> str:
    """Hardware line, one row per (family, point), the settings under it."""
    cfg = report["config"]
    by_key = {(r["family"], r["point"], r["phase"]): r for r in report["records"]}
    lines = [
        hardware_line(report),
        "",
        "| family | side | levels | params | grad. ckpt | train ms/img | train MiB | eval ms/img | eval MiB "
        "| sample ms/img | sample MiB |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for family in cfg["families"]:
        for point in cfg["points"]:
            side, checkpointing = parse_point(point)
            model = report["models"][family]["sides"][str(side)]
            cells = []
            for phase in PHASES:
                record = by_key.get((family, point, phase))
                if record is None:
                    cells += ["as without", ""]
                else:
                    mib = record["memory"]["peak_delta_mib"]
                    cells += [f"{record['time']['per_image_ms']:.1f}", f"{mib:.1f}" if mib < 10 else f"{mib:.0f}"]
            lines.append(
                f"| {family} | {side} | {model['levels']} | {model['params'] / 1e6:.2f}M | "
                f"{'yes' if checkpointing else 'no'} | " + " | ".join(cells) + " |"
            )
    # Function evaluations per call, by family and point (models without ODEs have none).
    nfe: dict[str, dict[str, list[str]]] = {}
    for r in report["records"]:
        if r["time"]["nfe_per_call"] is not None:
            by_point = nfe.setdefault(r["family"], {}).setdefault(r["point"], [])
            by_point.append(f"{r['phase']} {r['time']['nfe_per_call']:g}")
    memory = (
        "peak CUDA memory allocated during one call minus the memory allocated before it"
        if report["environment"]["device"] == "cuda"
        else "peak RSS minus RSS before one call after one untimed call, in a fresh process per row (training "
        f"first, then evaluation and sampling); median of {cfg['memory_repeats']} process(es)"
    )
    lines += [
        "",
        f"Batch {cfg['batch']} ({cfg['data']}); ms/img = median wall time of one call / batch over {cfg['repeats']} "
        f"call(s) after {cfg['warmup']} warm-up call(s). MiB = {memory}. train = dequantize, bits/dim (+ RNODE "
        "terms), backward, Adam step; eval = bits/dim without a graph; sample = a batch of uint8 images. "
        "Gradient checkpointing acts only in training: evaluation and sampling are measured once per side.",
    ]
    for family in cfg["families"]:
        lines.append(f"{family}: {report['models'][family]['description']}.")
    for family, by_point in nfe.items():
        per = "; ".join(f"{point}: {', '.join(counts)}" for point, counts in by_point.items())
        lines.append(f"{family} function evaluations per call (every CNF block, adjoint solves included): {per}.")
    return "\n".join(lines)


def _series(report: dict[str, Any], family: str, phase: str) -> list[tuple[bool, list[dict[str, Any]]]]:
    """The family's records of ``phase`` by side: without, then with gradient checkpointing."""
    rows = sorted(
        (r for r in report["records"] if (r["family"], r["phase"]) == (family, phase)), key=lambda r: r["side"]
    )
    return [(on, part) for on in (False, True) if (part := [r for r in rows if bool(r["checkpointing"]) == on])]


def plot(report: dict[str, Any], path: Path) -> None:
    """Time per image and peak memory against the side, log-log; open markers: checkpointed training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    cfg = report["config"]
    colors = dict(zip(cfg["families"], plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    styles = {"train": "-", "eval": "--", "sample": ":"}
    markers = {"train": "o", "eval": "s", "sample": "^"}
    panels: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
        ("time per image (ms)", lambda r: r["time"]["per_image_ms"]),
        # A log axis cannot show 0: a tiny call whose pages were all resident reads as 0.01 MiB.
        ("peak extra memory of one call (MiB)", lambda r: max(r["memory"]["peak_delta_mib"], 1e-2)),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for ax, (label, value) in zip(axes, panels, strict=True):
        for family in cfg["families"]:
            for phase in PHASES:
                for checkpointed, rows in _series(report, family, phase):
                    ax.plot(
                        [r["side"] for r in rows],
                        [value(r) for r in rows],
                        linestyle="-." if checkpointed else styles[phase],
                        marker=markers[phase],
                        markerfacecolor="white" if checkpointed else colors[family],
                        color=colors[family],
                    )
        sides = sorted({r["side"] for r in report["records"]})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sides, [str(s) for s in sides])
        ax.set_xlabel("image side (pixels)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colors[f], linewidth=2, label=f) for f in cfg["families"]]
    handles += [Line2D([], [], color="grey", linestyle=styles[p], marker=markers[p], label=p) for p in PHASES]
    handles.append(
        Line2D([], [], color="grey", linestyle="-.", marker="o", markerfacecolor="white", label="train, grad. ckpt")
    )
    axes[1].legend(handles=handles, fontsize=8, loc="lower right")
    fig.suptitle(f"batch {cfg['batch']}; {hardware_line(report)}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="sides 32-128, fewer repeats (~3 min on 2 CPU threads)")
    mode.add_argument("--smoke", action="store_true", help="tiny models and images, seconds (tests)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where the models run (default cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 2; 1 with --smoke)")
    parser.add_argument(
        "--points", help="comma-separated sides, 'c' = checkpointed training (default 32,64,128,128c,256c)"
    )
    parser.add_argument("--families", help=f"comma-separated, from {','.join(FAMILIES)} (default both)")
    parser.add_argument("--batch", type=int, help="images per call (default 4)")
    parser.add_argument("--data", choices=["photos", "random"], help="bundled photo crops (default) or noise")
    parser.add_argument("--repeats", type=int, help="timed calls per (family, point, phase)")
    parser.add_argument("--memory-repeats", type=int, help="fresh processes per (family, point), CPU only")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument(
        "--plot", metavar="PATH", help=f"write the figure here (default {DEFAULT_PLOT} for full runs, none otherwise)"
    )
    parser.add_argument("--_memory-worker", metavar="FAMILY:POINT", help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory_worker:
        family, point = args._memory_worker.split(":")
        values = json.loads(args._config)
        cfg = BenchConfig(**{**values, "families": tuple(values["families"]), "points": tuple(values["points"])})
        print(json.dumps(memory_worker(cfg, family, point)))
        return 0

    cfg = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides: dict[str, Any] = {
        k: getattr(args, k)
        for k in ("device", "threads", "batch", "data", "repeats", "memory_repeats")
        if getattr(args, k) is not None
    }
    if args.points:
        overrides["points"] = tuple(p.strip() for p in args.points.split(","))
    if args.families:
        overrides["families"] = tuple(f.strip() for f in args.families.split(","))
    cfg = dataclasses.replace(cfg, **overrides)
    for point in cfg.points:
        try:
            parse_point(point)
        except ValueError as err:
            parser.error(str(err))
    if unknown := sorted(set(cfg.families) - set(FAMILIES)):
        parser.error(f"unknown families {unknown}; choose from {','.join(FAMILIES)}")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda, but torch {torch.__version__} sees no CUDA device "
            f"(built with CUDA {torch.version.cuda}); use --device cpu or a CUDA build of torch on a GPU machine"
        )

    report = run_benchmark(cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    plot_path = args.plot or (None if args.smoke or args.quick else DEFAULT_PLOT)
    if plot_path:
        plot(report, Path(plot_path))
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
