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
from msflow.train.objective import bpd_score, function_evaluations
from msflow.viz import save_grid

DIVERGED_BPD = 1000.0
"""Bits/dim above which an image counts as diverged: 8-bit data costs at most 8 bits/dim under
any density near uniform; 1000 only comes from a solve that blew up."""


@evaluates
def dataset_bits_per_dim(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool = False,
    score: Callable[[nn.Module, Tensor, torch.Generator], Tensor] | None = None,
    limit: int = 0,
) -> Tensor:
    """Per-image bits/dim of a whole dataset (or its first ``limit`` images) with one seeded
    uniform dequantization draw.

    The noise comes from a CPU generator seeded with ``seed`` and the batches are taken in
    order, so the same weights give the same numbers on every call (and on CPU and CUDA up to
    floating-point summation order). ``score(model, x, generator)`` replaces the model's
    ``bits_per_dim`` (e.g. one level's bits/dim of a multi-resolution model). A paired dataset's
    conditions (``dataset.conds``) are passed along, for conditional models.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out = []
    conds = getattr(dataset, "conds", None)
    n = min(limit, len(dataset)) if limit > 0 else len(dataset)
    bar = tqdm(total=n, desc="eval", unit="img", leave=False, disable=not progress, dynamic_ncols=True)
    for start in range(0, n, batch_size):
        x = dataset.images[start : min(start + batch_size, n)].to(device)
        nfe_before = function_evaluations(model)
        if conds is not None:
            cond = conds[start : min(start + batch_size, n)].to(device)
            values = (score or bpd_score(None))(model, x, generator, cond)
        else:
            values = model.bits_per_dim(x, generator=generator) if score is None else score(model, x, generator)
        out.append(values.to(torch.float64).cpu())
        bar.update(len(x))
        if nfe_before is not None:  # a continuous flow: the solver's work on this batch
            bar.set_postfix(nfe=function_evaluations(model) - nfe_before)
    bar.close()
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
    limit: int = 0,
) -> dict[str, float]:
    """Test bits/dim as ``{"bpd": mean, "bpd_stderr": standard error, "n": images, "diverged": count}``
    (of the first ``limit`` images when ``limit > 0``); ``diverged`` counts images with non-finite
    bits/dim or above :data:`DIVERGED_BPD`."""
    values = dataset_bits_per_dim(model, dataset, batch_size, seed, progress=progress, score=score, limit=limit)
    mean, stderr = mean_and_stderr(values)
    # A diverging ODE gives a few images astronomical bits/dim (or inf) that swamp the mean: count
    # them, so a report can say so instead of printing a meaningless average.
    diverged = int((~torch.isfinite(values) | (values > DIVERGED_BPD)).sum())
    return {"bpd": mean, "bpd_stderr": stderr, "n": len(values), "diverged": diverged}


@evaluates
def sample_grids(
    model: nn.Module,
    out_dir: Path,
    n: int,
    temperatures: Sequence[float],
    seed: int,
    tag: str,
    pairs: tuple[Tensor, Tensor] | None = None,
    progress: bool = False,
) -> list[Path]:
    """Write one PNG grid of ``n`` samples per temperature; returns the paths.

    ``progress`` shows a bar over the temperatures (with a continuous flow's function evaluations).

    A multi-resolution model also gets one grid per coarser resolution, ``{tag}_t{T}_{h}x{w}.png``:
    the same samples at the resolutions they were generated through (MRCNF, Figures 6-7). A
    conditional model gets instead one grid of test ``pairs`` (targets, conditions) with a row per
    condition: the condition, ``samples_per_row`` samples per temperature, the ground truth.
    """
    if pairs is not None:
        return [conditional_grid(model, *pairs, temperatures, seed, out_dir / f"{tag}.png")]
    was_training = model.training
    model.eval()
    paths = []
    bar = tqdm(temperatures, desc=f"sample {n}", unit="T", leave=False, disable=not progress, dynamic_ncols=True)
    for temperature in bar:
        nfe_before = function_evaluations(model)
        generator = torch.Generator().manual_seed(seed)
        name = f"{tag}_t{temperature:.2f}"
        *coarser, images = model.sample_resolutions(n, temperature=temperature, generator=generator)
        for small in coarser:
            h, w = small.shape[-2:]
            save_grid(small, out_dir / f"{name}_{h}x{w}.png", scale=max(1, 96 // w))
        scale = max(1, 96 // images.shape[-1])
        paths.append(save_grid(images, out_dir / f"{name}.png", scale=scale))
        if nfe_before is not None:
            bar.set_postfix(T=temperature, nfe=function_evaluations(model) - nfe_before)
    model.train(was_training)
    return paths


def _as_rgb_display(images: Tensor, size: tuple[int, int], n_bits: int) -> Tensor:
    """uint8 images resized (nearest) to ``size`` as 3-channel 0..255 pictures (masks: 0/255)."""
    shown = images.to(torch.float32) * (255.0 / (2**n_bits - 1))
    shown = torch.nn.functional.interpolate(shown, size=size, mode="nearest")
    return shown.expand(-1, 3, -1, -1).round().to(torch.uint8) if shown.shape[1] == 1 else shown.to(torch.uint8)


@evaluates
def conditional_grid(
    model: nn.Module,
    targets: Tensor,
    conds: Tensor,
    temperatures: Sequence[float],
    seed: int,
    path: Path,
    samples_per_row: int = 2,
) -> Path:
    """One PNG: per row a condition (nearest-upsampled), samples at each temperature, the target."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_bits = model.n_bits
    size = tuple(targets.shape[-2:])
    rows = []
    for target, cond in zip(targets, conds, strict=True):
        row = [_as_rgb_display(cond[None], size, 8)]
        for temperature in temperatures:
            generator = torch.Generator().manual_seed(seed)
            drawn = model.sample(
                samples_per_row, temperature=temperature, cond=cond[None].to(device), generator=generator
            )
            row.append(_as_rgb_display(drawn.cpu(), size, n_bits))
        row.append(_as_rgb_display(target[None], size, n_bits))
        rows.append(torch.cat(row))
    model.train(was_training)
    grid = torch.cat(rows)
    return save_grid(grid, path, nrow=len(grid) // len(rows), scale=max(1, 96 // size[-1]))
