"""Segmentation with a conditional model: the mean of samples, thresholded masks, and Table 3.

Winkler et al. (section 5.2) segment with a flow by drawing 100 masks from ``p(y | x)`` and
averaging them; the mean, thresholded over a sweep, gives the precision-recall curve and its
maximal F-score, and the individual samples show how calibrated the model is (Figure 5 right).
A factorized model's soft map is its exact per-pixel probability, and its "samples" are
independent Bernoulli draws from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from msflow.analysis.cond_superres import input_multiple, pad_to_multiple
from msflow.core import evaluation_context
from msflow.errors import ShapeError
from msflow.metrics.bpd import mean_and_stderr
from msflow.metrics.segmentation import PRCurve, max_f_score, precision_recall_curve, sample_pr_points


@dataclass
class Segmentation:
    """``mean``: soft map ``(1, H, W)`` in [0, 1]; ``mask``: it thresholded; ``samples``: ``(n, 1, H, W)``."""

    mean: Tensor
    mask: Tensor
    samples: Tensor


def _padded(model: nn.Module, images: Tensor) -> Tensor:
    """Images padded (edge pixels repeated) to the model's size multiple; outputs are cropped back."""
    if images.dim() != 4 or images.shape[1] != model.cond_shape[0]:
        raise ShapeError(f"expected images (B, {model.cond_shape[0]}, H, W), got {tuple(images.shape)}")
    return pad_to_multiple(images, input_multiple(model))


@torch.no_grad()
def sample_masks(
    model: nn.Module,
    images: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    max_batch_pixels: int = 2**21,
) -> Tensor:
    """``n`` masks per image: ``(n, B, 1, H, W)`` uint8 for uint8 images ``(B, C, H, W)`` of any size.

    Masks are drawn in batches of at most ``max_batch_pixels`` pixels, so memory stays bounded
    for whole photos and many samples.
    """
    h, w = images.shape[-2:]
    padded = _padded(model, images)
    per_batch = max(1, max_batch_pixels // (padded.shape[-2] * padded.shape[-1]))
    device = next(model.parameters()).device
    out = []
    with evaluation_context(model):
        for image in padded:
            cond = image[None].to(device)
            drawn = [
                model.sample(min(per_batch, n - start), temperature, cond, generator).cpu()
                for start in range(0, n, per_batch)
            ]
            out.append(torch.cat(drawn)[..., :h, :w])
    return torch.stack(out, dim=1)


def soft_map(model: nn.Module, images: Tensor, samples: Tensor) -> Tensor:
    """The soft segmentation: a factorized model's probability, else the mean of ``samples``."""
    if model.probability_map:
        h, w = images.shape[-2:]
        device = next(model.parameters()).device
        with evaluation_context(model):
            return model.probability(_padded(model, images).to(device)).cpu().float()[..., :h, :w]
    return samples.float().mean(0)


def segment(
    model: nn.Module, image: Tensor, n: int = 100, threshold: float = 0.5, generator: torch.Generator | None = None
) -> Segmentation:
    """Segment one uint8 image ``(C, H, W)``: ``n`` samples, their mean, and the mean thresholded."""
    samples = sample_masks(model, image[None], n, generator)[:, 0]
    mean = soft_map(model, image[None], samples[:, None])[0]
    return Segmentation(mean, (mean >= threshold).to(torch.uint8), samples)


@dataclass
class SegmentationResult:
    """One model's Table 3 entries, its PR curve (Figure 5 left) and per-sample PR points (right)."""

    bpd: float
    bpd_stderr: float
    max_f: float
    threshold: float
    curve: PRCurve
    points: Tensor


def evaluate_segmentation(
    model: nn.Module,
    targets: Tensor,
    images: Tensor,
    n: int = 100,
    seed: int = 0,
    fov: Tensor | None = None,
    batch_size: int = 50,
) -> SegmentationResult:
    """Bits/dim, maximal F-score of the soft map and per-sample PR points on a test set.

    Args:
        model: a conditional flow or factorized segmenter.
        targets: binary masks ``(N, 1, H, W)``.
        images: their condition images ``(N, C, H, W)``.
        n: samples per image (the paper uses 100).
        seed: seeds dequantization noise and samples.
        fov: optional field-of-view mask; precision and recall count only pixels inside it.
        batch_size: images per bits/dim batch.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    bpd = []
    with evaluation_context(model):
        for start in range(0, len(targets), batch_size):
            y, x = (t[start : start + batch_size].to(device) for t in (targets, images))
            bpd.append(model.bits_per_dim(y, x, gen).double().cpu())
    mean, stderr = mean_and_stderr(torch.cat(bpd))
    samples = sample_masks(model, images, n, gen)
    soft = soft_map(model, images, samples)
    curve = precision_recall_curve(soft, targets, fov)
    best = max_f_score(curve)
    points = sample_pr_points(samples, targets, fov)
    return SegmentationResult(mean, stderr, best.f, best.threshold, curve, points)


def format_segmentation_table(results: dict[str, SegmentationResult], n: int) -> str:
    """Table 3 as markdown: bits/dim and maximal F-score per model."""
    lines = [
        f"| model | bits/dim | max F (mean of {n} samples) | at threshold | mean F of single samples |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        p, q = r.points[:, 0], r.points[:, 1]
        single = torch.where(p + q > 0, 2 * p * q / (p + q), torch.zeros_like(p)).mean().item()
        bpd = f"{r.bpd:.4f} +- {r.bpd_stderr:.4f}" if math.isfinite(r.bpd) else "-"
        lines.append(f"| {name} | {bpd} | {r.max_f:.4f} | {r.threshold:.3f} | {single:.4f} |")
    return "\n".join(lines)


def names_for(runs: Sequence[str], models: Sequence[nn.Module]) -> list[str]:
    """Short row names: the model's kind and dequantization, else the run folder."""
    names = []
    for run, model in zip(runs, models, strict=True):
        if model.probability_map:
            kind = "factorized (weighted Bernoulli)"
        else:
            deq = "binary" if model.dequantizer.scale_bits == 0 else "uniform"
            kind = f"flow, {deq} dequantization"
        names.append(kind if kind not in names else f"{kind} ({run})")
    return names
