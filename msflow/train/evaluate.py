"""Evaluation (test bits/dim with a seeded dequantization draw) and sample grids."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from msflow.core import evaluates
from msflow.data import ImageDataset
from msflow.metrics.bpd import mean_and_stderr
from msflow.viz import save_grid


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from msflow.errors import ConfigError

        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


@evaluates
def dataset_bits_per_dim(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool = False,
    score: Callable[[nn.Module, Tensor, torch.Generator], Tensor] | None = None,
) -> Tensor:
    """Per-image bits/dim of a whole dataset with one seeded uniform dequantization draw.

    The noise comes from a CPU generator seeded with ``seed`` and the batches are taken in
    order, so the same weights give the same numbers on every call (and on CPU and CUDA up to
    floating-point summation order). ``score(model, x, generator)`` replaces the model's
    ``bits_per_dim`` (e.g. one level's bits/dim of a multi-resolution model).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out = []
    batches = range(0, len(dataset), batch_size)
    for start in tqdm(batches, desc="eval", leave=False, disable=not progress):
        x = dataset.images[start : start + batch_size].to(device)
        values = model.bits_per_dim(x, generator=generator) if score is None else score(model, x, generator)
        out.append(values.to(torch.float64).cpu())
    model.train(was_training)
    return torch.cat(out)


def dataset_level_bits_per_dim(
    model: nn.Module, dataset: ImageDataset, batch_size: int = 500, seed: int = 0, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """``(bits/dim (N,), each level's bits/dim over its own dims (N, S))`` of a multi-resolution model.

    One pass and the same seeded draws as :func:`dataset_bits_per_dim`, so the first output
    equals its result; the columns of the second, weighted by ``level_dims() / D``, add up to it.
    """

    def score(m: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        total, per_level = m.bits_per_dim_by_level(x, generator)
        return torch.stack([total, *per_level], 1)

    both = dataset_bits_per_dim(model, dataset, batch_size, seed, progress, score)
    return both[:, 0], both[:, 1:]


def evaluate(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool = False,
    score: Callable[[nn.Module, Tensor, torch.Generator], Tensor] | None = None,
) -> dict[str, float]:
    """Test bits/dim as ``{"bpd": mean, "bpd_stderr": standard error, "n": images}``."""
    values = dataset_bits_per_dim(model, dataset, batch_size, seed, progress=progress, score=score)
    mean, stderr = mean_and_stderr(values)
    return {"bpd": mean, "bpd_stderr": stderr, "n": len(values)}


@evaluates
def sample_grids(
    model: nn.Module, out_dir: Path, n: int, temperatures: Sequence[float], seed: int, tag: str
) -> list[Path]:
    """Write one PNG grid of ``n`` samples per temperature; returns the paths.

    A multi-resolution model also gets one grid per coarser resolution, ``{tag}_t{T}_{h}x{w}.png``:
    the same samples at the resolutions they were generated through (MRCNF, Figures 6-7).
    """
    was_training = model.training
    model.eval()
    paths = []
    for temperature in temperatures:
        generator = torch.Generator().manual_seed(seed)
        name = f"{tag}_t{temperature:.2f}"
        if hasattr(model, "sample_resolutions"):
            *coarser, images = model.sample_resolutions(n, temperature=temperature, generator=generator)
            for small in coarser:
                h, w = small.shape[-2:]
                save_grid(small, out_dir / f"{name}_{h}x{w}.png", scale=max(1, 96 // w))
        else:
            images = model.sample(n, temperature=temperature, generator=generator)
        scale = max(1, 96 // images.shape[-1])
        paths.append(save_grid(images, out_dir / f"{name}.png", scale=scale))
    model.train(was_training)
    return paths
