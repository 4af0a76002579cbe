"""Gradient checkpointing benchmark: training memory and time of a flow with and without recomputation.

The issue's acceptance: "with gradient checkpointing, peak training memory of the balanced flow
at 128x128 (batch 4) drops by at least 3x for at most 1.5x the time". One training step is
dequantize uint8 images, bits/dim, ``.mean().backward()``, Adamax step; with checkpointing
(:func:`msflow.core.set_gradient_checkpointing`) every block keeps only its input and recomputes
its activations in backward.

How it measures (see benchmarks/README.md):

- **Peak memory** in a fresh process per setting: the model is built, one training step runs
  (one-time costs paid), freed heap goes back to the OS (``malloc_trim``), the RSS high-water
  mark is reset (``/proc/self/clear_refs``), one more step runs, and its peak RSS (``VmHWM``)
  minus the RSS before it is the step's extra memory; median of ``memory_repeats`` processes.
- **Time** per training step in one process, the two settings **interleaved** (one step of each
  per repeat, alternating which goes first), warm-up excluded; median over repeats.
- **Same results**: loss and gradients of one step on the benchmark batch with and without
  checkpointing (same weights, same dequantization noise), max abs difference.

Usage::

    python benchmarks/checkpointing.py --json checkpointing.json       # a few minutes on an idle 2-core CPU
    python benchmarks/checkpointing.py --option steps=2 --repeats 4   # other sizes, fewer repeats
    python benchmarks/checkpointing.py --smoke                         # tiny model, seconds (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _memory import cpu_name, measure_peak, median_of_processes, worker_command
from torch import Tensor, nn

from msflow import create_model
from msflow.core import set_gradient_checkpointing

SETTINGS: dict[str, bool] = {"without": False, "with": True}  # name -> gradient checkpointing on
MIN_MEMORY_RATIO = 3.0  # acceptance: at least 3x less peak training memory ...
MAX_TIME_RATIO = 1.5  # ... for at most 1.5x the time per step


@dataclass(frozen=True)
class BenchConfig:
    """Model, workload and repetition counts of one benchmark run."""

    preset: str = "balanced-large"
    # Overrides of the preset (create_model keywords); these are balanced-large's own, spelled out.
    options: dict[str, Any] = field(default_factory=lambda: {"levels": 6, "steps": 4, "hidden": 64})
    size: int = 128  # images are channels x size x size
    channels: int = 3
    batch: int = 4
    data: str = "photos"  # or "random" (uniform uint8 noise)
    threads: int = 2
    warmup: int = 2  # untimed steps per setting
    repeats: int = 10  # timed steps per setting, interleaved; the median is reported
    memory_repeats: int = 3  # fresh processes per setting; the median is reported
    lr: float = 1e-3
    seed: int = 0


PRESETS: dict[str, BenchConfig] = {
    "full": BenchConfig(),
    # Tiny model and images for tests; one thread, because two OpenMP threads on a busy machine
    # can make tiny ops ~100x slower (spinning barriers).
    "smoke": BenchConfig(
        options={"levels": 2, "steps": 1, "hidden": 8},
        size=16,
        threads=1,
        warmup=1,
        repeats=2,
        memory_repeats=1,
    ),
}


# --------------------------------------------------------------------------- workload


def make_batch(cfg: BenchConfig) -> Tensor:
    """``batch`` seeded uint8 images: ``size x size`` crops of the bundled training photos, or noise."""
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.channels, cfg.size, cfg.size)
    if cfg.data == "random":
        return torch.randint(0, 256, (cfg.batch, *shape), generator=gen, dtype=torch.uint8)
    if cfg.data != "photos":
        raise ValueError(f"unknown data {cfg.data!r}; use 'photos' or 'random'")
    if cfg.channels not in (1, 3):
        raise ValueError(f"the bundled photos are RGB or greyscale, not {cfg.channels} channels; use data='random'")
    import numpy as np

    from msflow.data.bundled import cut_patches
    from msflow.data.photos import PHOTO_SPLIT, bundled_photos

    photos = bundled_photos(grey=cfg.channels == 1)
    patches = np.concatenate([cut_patches(p, cfg.size) for n, p in photos.items() if PHOTO_SPLIT[n] == "train"])
    if len(patches) < cfg.batch:
        raise ValueError(f"the bundled photos give {len(patches)} {cfg.size}x{cfg.size} crops; use data='random'")
    index = torch.randperm(len(patches), generator=gen)[: cfg.batch]
    return torch.from_numpy(patches[index.numpy()])


def data_description(cfg: BenchConfig) -> str:
    if cfg.data == "random":
        return f"{cfg.batch} uniform uint8 noise images {cfg.channels}x{cfg.size}x{cfg.size}"
    colour = "greyscale" if cfg.channels == 1 else "RGB"
    return (
        f"{cfg.batch} {colour} {cfg.size}x{cfg.size} crops (non-overlapping, seeded choice) of the bundled "
        "training photos (msflow.data.photos.bundled_photos)"
    )


def build_model(cfg: BenchConfig, checkpointing: bool) -> nn.Module:
    """The preset at ``channels x size x size``, seeded, so both settings start from the same weights."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.preset, image_shape=(cfg.channels, cfg.size, cfg.size), **cfg.options)
    return set_gradient_checkpointing(model, checkpointing)


class Trainer:
    """One model and its Adamax optimiser; calling it runs one training step and returns the loss."""

    def __init__(self, cfg: BenchConfig, checkpointing: bool) -> None:
        self.model = build_model(cfg, checkpointing)
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=cfg.lr)

    def __call__(self, x: Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model.bits_per_dim(x).mean()
        loss.backward()
        self.optimizer.step()
        return loss.item()


# --------------------------------------------------------------------------- measurements


def check_same_results(cfg: BenchConfig, x: Tensor) -> dict[str, Any]:
    """Loss and gradients of one step with and without checkpointing: same weights, same noise."""
    results = []
    for checkpointing in SETTINGS.values():
        model = build_model(cfg, checkpointing)
        loss = model.bits_per_dim(x, generator=torch.Generator().manual_seed(cfg.seed)).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    grad_diff = max((a - b).abs().max().item() for a, b in zip(grads_a, grads_b, strict=True))
    grad_scale = max(a.abs().max().item() for a in grads_a)
    close = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(grads_a, grads_b, strict=True))
    return {
        "loss": loss_a.item(),
        "loss_max_abs_diff": (loss_a - loss_b).abs().item(),
        "grad_max_abs_diff": grad_diff,
        "grad_max_abs": grad_scale,
        "identical": bool(torch.equal(loss_a, loss_b)) and grad_diff == 0.0,
        "match": bool(torch.allclose(loss_a, loss_b, rtol=1e-6, atol=0)) and close,
    }


def time_steps(cfg: BenchConfig, x: Tensor) -> dict[str, Any]:
    """Seconds per training step per setting: interleaved repeats, warm-up excluded.

    Besides wall-clock time it records CPU seconds of this process (``time.process_time``),
    which are less sensitive to other processes taking the cores.
    """
    trainers = {name: Trainer(cfg, on) for name, on in SETTINGS.items()}
    for trainer in trainers.values():
        for _ in range(cfg.warmup):
            trainer(x)
    wall: dict[str, list[float]] = {name: [] for name in trainers}
    cpu: dict[str, list[float]] = {name: [] for name in trainers}
    loss: dict[str, float] = {}
    for r in range(cfg.repeats):
        for name in SETTINGS if r % 2 == 0 else reversed(SETTINGS):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            loss[name] = trainers[name](x)
            wall[name].append(time.perf_counter() - wall0)
            cpu[name].append(time.process_time() - cpu0)
    return {
        name: {
            "median": statistics.median(wall[name]),
            "min": min(wall[name]),
            "max": max(wall[name]),
            "samples": wall[name],
            "cpu_median": statistics.median(cpu[name]),
            "cpu_samples": cpu[name],
            "last_loss": loss[name],
        }
        for name in trainers
    }


def memory_worker(cfg: BenchConfig, setting: str) -> dict[str, Any]:
    """Run in a fresh process: the extra peak RSS of one training step in ``setting``."""
    torch.set_num_threads(cfg.threads)
    x = make_batch(cfg)
    step = Trainer(cfg, SETTINGS[setting])
    # One step first: thread pools, oneDNN kernels, the autograd engine and Adamax's state are
    # then paid for, and the delta is what the step itself needs (activations, gradients).
    step(x)
    return measure_peak(lambda: step(x))


def measure_memory(cfg: BenchConfig, setting: str) -> dict[str, Any]:
    """Median of ``memory_repeats`` fresh-process measurements of ``memory_worker``."""
    config = json.dumps(dataclasses.asdict(cfg))
    cmd = worker_command(__file__, "--_memory-worker", setting, "--_config", config)
    return median_of_processes(cmd, cfg.memory_repeats, setting)


# --------------------------------------------------------------------------- run + report


def _environment(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": cfg.threads,
        "loadavg_before": list(os.getloadavg()),
    }


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """Check results, time both settings, measure their memory; returns the JSON report."""
    torch.set_num_threads(cfg.threads)
    env = _environment(cfg)
    start = time.perf_counter()
    x = make_batch(cfg)
    model = build_model(cfg, False)
    params = sum(p.numel() for p in model.parameters())
    del model
    check = check_same_results(cfg, x)
    timing = time_steps(cfg, x)
    memory = {name: measure_memory(cfg, name) for name in SETTINGS}
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    without, with_ = timing["without"], timing["with"]
    ratios = {
        "memory": memory["without"]["peak_delta_mib"] / memory["with"]["peak_delta_mib"],
        "time": with_["median"] / without["median"],
        # Repeat r of both ran back to back, so their quotient cancels slow drifts in machine load.
        "time_paired": statistics.median(b / a for a, b in zip(without["samples"], with_["samples"], strict=True)),
        "cpu_time": with_["cpu_median"] / without["cpu_median"],
    }
    acceptance = {
        "min_memory_ratio": MIN_MEMORY_RATIO,
        "max_time_ratio": MAX_TIME_RATIO,
        "memory_ok": ratios["memory"] >= MIN_MEMORY_RATIO,
        "time_ok": ratios["time"] <= MAX_TIME_RATIO,
    }
    acceptance["pass"] = acceptance["memory_ok"] and acceptance["time_ok"]
    return {
        "config": dataclasses.asdict(cfg),
        "environment": env,
        "model": {"preset": cfg.preset, "image_shape": [cfg.channels, cfg.size, cfg.size], "params": params},
        "data": data_description(cfg),
        "check": check,
        "settings": {name: {"time": timing[name], "memory": memory[name]} for name in SETTINGS},
        "ratios": ratios,
        "acceptance": acceptance,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The result table, the acceptance verdict and the gradient check."""
    cfg, env, check, acc = report["config"], report["environment"], report["check"], report["acceptance"]
    ratios = report["ratios"]
    options = ", ".join(f"{k}={v}" for k, v in cfg["options"].items())
    lines = [
        f"{cfg['preset']} ({options}) at {'x'.join(map(str, report['model']['image_shape']))}, "
        f"{report['model']['params'] / 1e6:.2f}M parameters, batch {cfg['batch']}, Adamax; {env['threads']} threads; "
        f"torch {env['torch']}; {env['cpu']}; load average {env['loadavg_before'][0]:.2f} -> "
        f"{env['loadavg_after'][0]:.2f}",
        f"Data: {report['data']}.",
        "",
        "| gradient checkpointing | peak extra MiB [per process] | s/step [min-max] | CPU s/step |",
        "|---|---:|---:|---:|",
    ]
    for name, s in report["settings"].items():
        t, m = s["time"], s["memory"]
        samples = ", ".join(f"{v:.1f}" for v in m["peak_delta_mib_samples"])
        lines.append(
            f"| {name} | {m['peak_delta_mib']:.1f} [{samples}] | {t['median']:.2f} [{t['min']:.2f}-{t['max']:.2f}] "
            f"| {t['cpu_median']:.2f} |"
        )
    verdict = "PASS" if acc["pass"] else "FAIL"
    met = {True: "met", False: "NOT met"}
    lines += [
        f"| **ratio** | **{ratios['memory']:.2f}x less** | **{ratios['time']:.2f}x the time** "
        f"(paired {ratios['time_paired']:.2f}) | {ratios['cpu_time']:.2f}x |",
        "",
        f"Acceptance (>= {acc['min_memory_ratio']:g}x less memory for <= {acc['max_time_ratio']:g}x the time): "
        f"**{verdict}** (memory {met[acc['memory_ok']]}, time {met[acc['time_ok']]}).",
        f"Same results: loss {check['loss']:.4f} bits/dim, max |loss difference| {check['loss_max_abs_diff']:.3g}, "
        f"max |gradient difference| {check['grad_max_abs_diff']:.3g} (largest |gradient| {check['grad_max_abs']:.3g}); "
        f"{'identical' if check['identical'] else 'match' if check['match'] else 'MISMATCH'}.",
        "",
        "Peak extra MiB = peak RSS minus RSS before one training step (forward bits/dim, backward, Adamax step), "
        f"in a fresh process per setting after one untimed step; median of {cfg['memory_repeats']} process(es). "
        f"s/step: median [min-max] over {cfg['repeats']} interleaved steps per setting, {cfg['warmup']} warm-up "
        "step(s) excluded; paired = median over repeats of the per-repeat ratio. Memory ratio = without / with; "
        "time ratio = with / without.",
    ]
    return "\n".join(lines)


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, lists), else as a string."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model and images, seconds (tests)")
    parser.add_argument("--preset", help="model preset (default balanced-large; another one keeps its own options)")
    parser.add_argument(
        "--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="override a preset option"
    )
    parser.add_argument("--size", type=int, help="image side (default 128)")
    parser.add_argument("--channels", type=int, help="image channels (default 3; 1 for greyscale presets)")
    parser.add_argument("--batch", type=int, help="images per step (default 4)")
    parser.add_argument("--data", choices=["photos", "random"], help="bundled photo crops (default) or noise")
    parser.add_argument("--threads", type=int, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, help="timed steps per setting (default 10)")
    parser.add_argument("--memory-repeats", type=int, help="fresh processes per setting (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--_memory-worker", metavar="SETTING", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._memory_worker:
        print(json.dumps(memory_worker(BenchConfig(**json.loads(args._config)), args._memory_worker)))
        return 0

    cfg = PRESETS["smoke" if args.smoke else "full"]
    if args.preset not in (None, cfg.preset):
        cfg = dataclasses.replace(cfg, options={})  # another preset starts from its own options
    fields = ("preset", "size", "channels", "batch", "data", "threads", "repeats", "memory_repeats")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    cfg = dataclasses.replace(cfg, **overrides, options=cfg.options | dict(args.option))
    report = run_benchmark(cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
