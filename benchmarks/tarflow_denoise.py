"""Samples of a noise-trained TarFlow with and without its denoising score step, scored by the
Frechet classifier distance (FCD) against the test set.

A TarFlow trained on noisy data ``h + sigma * eps`` (``noise_std``) samples the noisy
distribution; one score step ``h + sigma^2 grad_h log p(h)`` (Tweedie's formula) moves each sample
to the posterior mean of the clean image. This script runs ``msflow temperature``'s sweep
(:func:`msflow.analysis.temperature.temperature_sweep`) twice on the same latents, once with the
step off and once on, and writes the FCD of both and a grid of each.

Example::

    python benchmarks/tarflow_denoise.py runs/mnist5k-tarflow-noisy --json docs/results/tarflow-denoise.json \\
        --grids docs/figures/tarflow_denoise
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import msflow
from msflow.analysis.temperature import temperature_sweep
from msflow.data import get_dataset
from msflow.runs import load_run
from msflow.viz import save_grid


def markdown_table(report: dict) -> str:
    """One row per temperature: FCD without and with the score step, and the train-vs-test floor."""
    lines = [
        f"| temperature | FCD, no score step | FCD, with the score step | train vs test ({report['n']} images) |",
        "|---|---|---|---|",
    ]
    for off, on in zip(report["denoise=False"], report["denoise=True"], strict=True):
        row = [f"{off['temperature']:g}", f"{off['fcd']:.2f}", f"{on['fcd']:.2f}", f"{report['reference']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a TarFlow run trained with noise_std > 0")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--grids", help="path prefix of the two sample grids (PNG)")
    parser.add_argument("-n", type=int, default=500, help="samples per temperature")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = msflow.load(args.run).eval()
    if model.noise_std <= 0:
        parser.error(f"{args.run} was trained without noise (noise_std=0): there is no denoising step to compare")
    data = load_run(args.run)[1].data.name
    train, test = get_dataset(data, "train"), get_dataset(data, "test")
    report = {
        "run": str(args.run),
        "noise_std": model.noise_std,
        "n": args.n,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
    }
    for denoise in (False, True):
        model.denoise = denoise
        sweep = temperature_sweep(model, train, test, args.temperatures, n=args.n, seed=args.seed, progress=True)
        report[f"denoise={denoise}"] = sweep["rows"]
        report["reference"] = sweep["reference"]
        if args.grids:
            save_grid(sweep["grids"][-1], f"{args.grids}_denoise{int(denoise)}.png", scale=2)
        print(f"denoise={denoise}: {sweep['rows']} (train vs test: {sweep['reference']:.3f})", flush=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
