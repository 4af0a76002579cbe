"""Jacobi (parallel fixed-point) against sequential (key/value-cached) decoding of a trained TarFlow:
how far apart the two inverses land, how many sweeps Jacobi needs, and the CPU seconds of each.

Sequential decoding runs one Transformer step per token and block; a Jacobi sweep updates every
token of a block at once from the previous sweep's tokens, and stops once no token moves by more
than ``tol``. The contestants alternate over ``--repeats`` rounds on the same latents; the median
CPU seconds of each is reported.

Example::

    OMP_NUM_THREADS=1 python benchmarks/tarflow_jacobi.py runs/mnist5k-tarflow --json docs/results/tarflow-jacobi.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import msflow

METHODS = ("sequential", "jacobi")


def measure(run: str, n: int, tol: float, repeats: int) -> dict:
    """Agreement, sweeps and median CPU seconds of both decodings of ``n`` latents."""
    model = msflow.load(run).eval()
    (z,) = model.sample_latents(n, 1.0, torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    out, stats = {}, {}
    with torch.no_grad():
        for _ in range(repeats):
            for method in METHODS:
                stats[method] = {}
                start = time.process_time()
                out[method] = model.invert(z, None, method, tol=tol, stats=stats[method])
                seconds[method].append(time.process_time() - start)
    median = {m: statistics.median(s) for m, s in seconds.items()}
    return {
        "run": run,
        "samples": n,
        "tol": tol,
        "threads": torch.get_num_threads(),
        "max_abs_difference": float((out["jacobi"] - out["sequential"]).abs().max()),
        "token_steps": sum(block.net.num_tokens for block in model.blocks),
        "jacobi_sweeps": stats["jacobi"]["sweeps"],
        "cpu_seconds": seconds,
        "median_cpu_seconds": median,
        "speedup": median["sequential"] / median["jacobi"],
    }


def markdown_table(r: dict) -> str:
    """One row: agreement, steps against sweeps, median CPU seconds, speed-up of Jacobi."""
    cols = ["samples", "max abs difference", "sequential token steps", "Jacobi sweeps"]
    cols += ["sequential CPU s", "Jacobi CPU s", "Jacobi speed-up"]
    s, j = r["median_cpu_seconds"]["sequential"], r["median_cpu_seconds"]["jacobi"]
    values = [str(r["samples"]), f"{r['max_abs_difference']:.1e}", str(r["token_steps"]), str(r["jacobi_sweeps"])]
    values += [f"{s:.2f}", f"{j:.2f}", f"{r['speedup']:.2f}x"]
    head, row = "| " + " | ".join(cols) + " |", "| " + " | ".join(values) + " |"
    return "\n".join([head, "|" + "---|" * len(cols), row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained TarFlow run")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("-n", type=int, default=64, help="latents decoded at once")
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = measure(args.run, args.n, args.tol, args.repeats)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown_table(report))


if __name__ == "__main__":
    main()
