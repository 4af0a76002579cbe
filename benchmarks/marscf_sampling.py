"""mAR-SCF sampling time against image size (paper 001, supplement C, Figure 7).

For each image side ``N`` the benchmark builds an mAR-SCF model with MixLogCDF couplings for
``C x N x N`` images with ``log2(N) - 2`` levels (the top level is always 4x4, as CIFAR-10's 3
levels at 32x32), so the number of sequential sampling steps of Lemma A.1,
``sum_{i<n} 2^i C + 2^{n+1} C = (3 * 2^n - 2) C``, grows linearly in ``N``. It then times
``model.sample(batch)`` (MARPS: levels coarse to fine, channels one at a time) ``repeats`` times
after ``warmup`` untimed draws, and reports the mean and standard deviation per ``N`` and two fits:
the slope of ``log t`` against ``log N`` (1 for linear growth) and the least-squares line
``t = a N + b`` with its R^2. The paper measured 1000 runs of batch 8 on a V100 GPU and found
linear growth.

Output: JSON (every timing, the fits, the configuration and the machine) and a plot with the
means, standard deviations, the fitted line and a reference line proportional to ``N``.

Usage::

    python benchmarks/marscf_sampling.py                  # N = 8, 16, 32, 64: writes docs/results + docs/figures
    python benchmarks/marscf_sampling.py --device cuda --repeats 1000
    python benchmarks/marscf_sampling.py --quick          # tiny models, N = 8, 16: seconds, writes under runs/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _memory import cpu_name

from msflow.models.marscf import lemma_a1_channels, marscf

ROOT = Path(__file__).resolve().parent.parent


def levels_for(side: int) -> int:
    """Levels that bring an ``N x N`` image to a 4x4 top level (``log2 N - 2``)."""
    if side < 8 or side & (side - 1):
        raise ValueError(f"image sides must be powers of two >= 8, got {side}")
    return int(math.log2(side)) - 2


def build(side: int, args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """A seeded mAR-SCF model for ``C x side x side`` with ActNorm initialised on random images."""
    torch.manual_seed(args.seed)
    model = marscf(
        (args.channels, side, side),
        levels=levels_for(side),
        steps=args.steps,
        hidden=args.hidden,
        coupling="mixlogcdf",
        prior="mar",
        mixtures=args.mixtures,
        lstm_hidden=args.lstm_hidden,
    ).to(device)
    x = torch.randint(0, 256, (16, args.channels, side, side), dtype=torch.uint8, device=device)
    with torch.no_grad():
        model.bits_per_dim(x)  # ActNorm's data-dependent init, so sampling uses initialised layers
    return model.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds per ``model.sample(batch)``, ``repeats`` times after ``warmup`` untimed draws."""
    gen = torch.Generator(device=device).manual_seed(args.seed)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            _sync(device)
            start = time.perf_counter()
            model.sample(args.batch, temperature=1.0, generator=gen)
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    return times


def fits(sides: list[int], means: list[float]) -> dict[str, float]:
    """Log-log slope and the least-squares line ``t = a N + b`` (with R^2) of mean time against ``N``."""
    n, t = np.asarray(sides, dtype=float), np.asarray(means, dtype=float)
    loglog_slope, loglog_intercept = np.polyfit(np.log(n), np.log(t), 1)
    a, b = np.polyfit(n, t, 1)
    residual = t - (a * n + b)
    total = ((t - t.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return {
        "loglog_slope": float(loglog_slope),
        "loglog_intercept": float(loglog_intercept),
        "linear_slope_s_per_pixel_side": float(a),
        "linear_intercept_s": float(b),
        "linear_r2": float(r2),
    }


def plot(results: list[dict[str, Any]], fit: dict[str, float], title: str, path: Path) -> None:
    """Mean +- std against N (linear and log-log axes), the fitted line and a line proportional to N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["side"] for r in results], dtype=float)
    mean = np.array([r["mean_s"] for r in results])
    std = np.array([r["std_s"] for r in results])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, log in zip(axes, (False, True), strict=True):
        ax.errorbar(n, mean, yerr=std, fmt="o-", capsize=3, label="mAR-SCF (MixLogCDF) sampling")
        grid = np.linspace(n.min(), n.max(), 50)
        fitted = fit["linear_slope_s_per_pixel_side"] * grid + fit["linear_intercept_s"]
        ax.plot(grid, fitted, "--", label=f"fit t = aN + b (R^2 {fit['linear_r2']:.3f})")
        ax.plot(grid, mean[0] * grid / n[0], "k:", label="t proportional to N")
        ax.set(xlabel="image side N", ylabel="seconds per batch")
        if log:
            ax.set(xscale="log", yscale="log", title=f"log-log slope {fit['loglog_slope']:.2f}")
            ax.minorticks_off()
            ax.set_xticks(n, [str(int(v)) for v in n])
        else:
            ax.set(title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64], help="image sides N (powers of 2, >= 8)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20, help="timed draws per N (the paper: 1000)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="MixLogCDF steps per level (supplement B)")
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--mixtures", type=int, default=32)
    p.add_argument("--lstm-hidden", type=int, default=32)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="default docs/results/marscf_sampling.json")
    p.add_argument("--plot", type=Path, default=None, help="default docs/figures/marscf_sampling.png")
    p.add_argument("--quick", action="store_true", help="tiny models, N = 8 and 16, 2 repeats; writes under runs/")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.warmup = [8, 16], 2, 1
        args.steps, args.hidden, args.mixtures, args.lstm_hidden = 1, 8, 4, 8
    where = ROOT / "runs" / "marscf_sampling_quick" if args.quick else None
    args.json = args.json or (where / "marscf_sampling.json" if where else ROOT / "docs/results/marscf_sampling.json")
    args.plot = args.plot or (where / "marscf_sampling.png" if where else ROOT / "docs/figures/marscf_sampling.png")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    machine = torch.cuda.get_device_name(device) if use_cuda else f"{cpu_name()}, {args.threads} threads"
    results = []
    for side in args.sizes:
        model = build(side, args, device)
        times = time_sampling(model, args, device)
        levels = levels_for(side)
        results.append(
            {
                "side": side,
                "levels": levels,
                "sequential_steps": model.num_sequential_steps(),
                "lemma_a1_steps": sum(lemma_a1_channels(args.channels, levels)),
                "params": sum(p.numel() for p in model.parameters()),
                "mean_s": statistics.fmean(times),
                "std_s": statistics.stdev(times) if len(times) > 1 else 0.0,
                "times_s": times,
            }
        )
        r = results[-1]
        print(
            f"N={side:3d}  levels {levels}  sequential steps {r['sequential_steps']:4d}  "
            f"{r['mean_s']:.4f} +- {r['std_s']:.4f} s per batch of {args.batch}",
            flush=True,
        )
    fit = fits([r["side"] for r in results], [r["mean_s"] for r in results])
    title = f"sampling time, batch {args.batch}, {machine}"
    report = {
        "what": "mAR-SCF (MixLogCDF couplings, mAR prior) sampling time vs image side N (paper 001, Fig. 7)",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "device": machine,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),
        },
        "results": results,
        "fit": fit,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    plot(results, fit, title, args.plot)
    print(
        f"log-log slope {fit['loglog_slope']:.3f}; linear fit t = {fit['linear_slope_s_per_pixel_side']:.3g} N "
        f"+ {fit['linear_intercept_s']:.3g} s (R^2 {fit['linear_r2']:.3f})"
    )
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
