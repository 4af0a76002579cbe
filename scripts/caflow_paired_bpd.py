"""Paired test bits/dim of two CAFLOW runs (e.g. eq. 8 vs its eq. 6 ablation) on the same images and draws.

Usage: .venv/bin/python scripts/caflow_paired_bpd.py RUN_A RUN_B

Both runs score every test pair with the same seeded dequantization noise, so the per-pair
difference cancels what the pairs share; prints its mean +- standard error.
"""

from __future__ import annotations

import sys

import torch

from msflow.runs import load_data, load_run


def test_bits_per_dim(run: str, batch: int = 250) -> torch.Tensor:
    model, cfg, _ = load_run(run, torch.device("cpu"))
    model.eval()
    data = load_data(cfg, "test")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        parts = [
            model.bits_per_dim(data.images[i : i + batch], data.conds[i : i + batch], generator)
            for i in range(0, len(data), batch)
        ]
    return torch.cat(parts)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = (test_bits_per_dim(run) for run in sys.argv[1:])
    d = a - b
    print(
        f"{sys.argv[1]}: {a.mean():.4f}, {sys.argv[2]}: {b.mean():.4f}, paired difference "
        f"{d.mean():.4f} +- {d.std() / len(d) ** 0.5:.4f} over {len(d)} test pairs, "
        f"lower for {100 * (d < 0).float().mean():.1f}%"
    )
