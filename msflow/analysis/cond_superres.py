"""Super-resolution with a conditional model (a flow or the factorized baseline) on images of any size,
and the held-out-photo comparison of Winkler et al.'s Table 2.

The models are convolutional, so a whole photo goes through in one piece: the low-resolution
input is padded at the right and bottom (edge pixels repeated) to a size the flow's squeezes
accept, and the output is cropped back, as the paper does with zero padding at test time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.core import evaluation_context
from msflow.data.pairs import downscale_bicubic
from msflow.errors import ShapeError
from msflow.metrics.fidelity import detail_ratio, psnr, ssim
from msflow.viz import save_grid


def input_multiple(model: nn.Module) -> int:
    """The condition sides a model takes must divide by this (1 for the factorized SR baseline)."""
    side = model.target_multiple
    return side // math.gcd(side, model.scale)


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Pad ``(B, C, h, w)`` at the right and bottom, repeating edge pixels, to sides divisible by ``multiple``."""
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return image
    return F.pad(image.float(), (0, pad_w, 0, pad_h), mode="replicate").round().to(image.dtype)


@torch.no_grad()
def sample_padded(
    model: nn.Module,
    cond: Tensor,
    n: int,
    temperature: float,
    generator: torch.Generator | None = None,
    max_batch_pixels: int = 2**21,
) -> Tensor:
    """``n`` samples of ``p(target | cond)`` for one condition ``(1, C, h, w)`` whose sides the model
    takes (see :func:`pad_to_multiple`), as uint8 on the CPU, at the size the model gives.

    Samples are drawn in batches of at most ``max_batch_pixels`` output pixels, so a photo's
    memory stays bounded whatever ``n`` is.
    """
    s = model.scale
    per_batch = max(1, max_batch_pixels // (cond.shape[-2] * cond.shape[-1] * s * s))
    out = []
    with evaluation_context(model):
        for start in range(0, n, per_batch):
            k = min(per_batch, n - start)
            out.append(model.sample(k, temperature=temperature, cond=cond, generator=generator).cpu())
    return torch.cat(out)


@torch.no_grad()
def upscale(
    model: nn.Module,
    low: Tensor,
    n: int,
    temperature: float,
    generator: torch.Generator | None = None,
    max_batch_pixels: int = 2**21,
) -> Tensor:
    """``n`` samples ``(n, C, h * s, w * s)`` of ``p(HR | low)`` for one uint8 image ``low`` ``(C, h, w)``.

    ``low`` is padded to sides the model takes and the samples are cropped back; they are drawn
    in batches of at most ``max_batch_pixels`` output pixels (:func:`sample_padded`).
    """
    c, h, w = low.shape
    if c != model.cond_shape[0]:
        raise ShapeError(f"this model takes {model.cond_shape[0]}-channel images, got {c} channels")
    device = next(model.parameters()).device
    padded = pad_to_multiple(low[None], input_multiple(model)).to(device)
    s = model.scale
    return sample_padded(model, padded, n, temperature, generator, max_batch_pixels)[..., : h * s, : w * s]


def crop_for(model: nn.Module, hr: Tensor) -> Tensor:
    """Crop a ground-truth ``(C, H, W)`` to sides a model can score exactly (at most a few pixels)."""
    m = input_multiple(model) * model.scale
    h, w = (d // m * m for d in hr.shape[-2:])
    if h == 0 or w == 0:
        raise ShapeError(f"a {hr.shape[-2]}x{hr.shape[-1]} image is smaller than the model's {m}-pixel unit")
    return hr[..., :h, :w]


@dataclass
class TableRow:
    """One method's means over the photos: bits/dim (``nan`` where a method has none), PSNR, SSIM
    (RGB and luma), and the high-frequency detail relative to the truth (:func:`detail_ratio`)."""

    method: str
    bpd: float
    psnr: float
    ssim: float
    psnr_y: float
    ssim_y: float
    detail: float


def _scores(images: Sequence[Tensor], truths: Sequence[Tensor]) -> list[float]:
    pairs = list(zip(images, truths, strict=True))
    metrics = [partial(psnr, luminance=False), partial(ssim, luminance=False), partial(psnr, luminance=True)]
    metrics += [partial(ssim, luminance=True), detail_ratio]
    return [sum(f(a, b) for a, b in pairs) / len(pairs) for f in metrics]


@torch.no_grad()
def superres_table(
    flow: nn.Module,
    baseline: nn.Module | None,
    photos: dict[str, tuple[Tensor, Tensor]],
    temperatures: Sequence[float] = (0.0, 0.5, 0.8),
    seed: int = 0,
) -> list[TableRow]:
    """Table 2 on whole photos: bicubic, the factorized baseline's mode, and one flow sample per temperature.

    Args:
        flow: a conditional super-resolution flow.
        baseline: the factorized baseline of the same scale (or ``None``).
        photos: ``name -> (HR (1, C, H, W), LR (1, C, H/s, W/s))`` uint8 pairs (see
            :func:`msflow.data.pairs.photo_pairs`); each pair is cropped to sides both models take.
        temperatures: flow sampling temperatures; 0 maps the prior's mean.
        seed: seeds the dequantization noise and the samples.

    Bits/dim are means over photos of each photo's conditional bits/dim; PSNR and SSIM compare
    uint8 RGB images without border crop (PSNR-Y, SSIM-Y: ITU-R 601 luma).
    """
    from msflow.analysis.superres import bicubic

    scale = flow.scale
    crops = {}
    for name, (hr, _) in photos.items():
        truth = crop_for(flow, hr[0])
        # LR of the crop by the data's own bicubic reduction, not a crop of the photo's LR,
        # so that the pair is exactly what a model trained on these pairs would see.
        crops[name] = (truth, downscale_bicubic(truth[None], scale)[0])
    truths = [t for t, _ in crops.values()]

    def bpd_of(model: nn.Module) -> float:
        gen = torch.Generator().manual_seed(seed)
        device = next(model.parameters()).device
        with evaluation_context(model):
            values = [
                model.bits_per_dim(t[None].to(device), low[None].to(device), gen).item() for t, low in crops.values()
            ]
        return sum(values) / len(values)

    rows = [TableRow("bicubic", math.nan, *_scores([bicubic(low, scale) for _, low in crops.values()], truths))]
    if baseline is not None:
        modes = [upscale(baseline, low, 1, 0.0)[0] for _, low in crops.values()]
        rows.append(TableRow("factorized (mode)", bpd_of(baseline), *_scores(modes, truths)))
    flow_bpd = bpd_of(flow)
    for t in temperatures:
        gen = torch.Generator().manual_seed(seed)
        samples = [upscale(flow, low, 1, t, gen)[0] for _, low in crops.values()]
        rows.append(TableRow(f"flow, T = {t:g}", flow_bpd, *_scores(samples, truths)))
    return rows


def format_table(rows: Sequence[TableRow], title: str) -> str:
    """The rows as a markdown table."""
    lines = [
        f"{title}",
        "",
        "| method | bits/dim | PSNR (dB) | SSIM | PSNR-Y (dB) | SSIM-Y | detail (truth = 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bpd = "-" if math.isnan(r.bpd) else f"{r.bpd:.4f}"
        scores = f"{r.psnr:.2f} | {r.ssim:.4f} | {r.psnr_y:.2f} | {r.ssim_y:.4f} | {r.detail:.3f}"
        lines.append(f"| {r.method} | {bpd} | {scores} |")
    return "\n".join(lines)


@torch.no_grad()
def temperature_grid(
    flow: nn.Module,
    baseline: nn.Module | None,
    truth: Tensor,
    path: str | Path,
    temperatures: Sequence[float] = (0.0, 0.5, 0.8),
    seed: int = 0,
    size: int = 64,
) -> Path:
    """Figure 3: a central crop of one photo as LR (enlarged), bicubic, the baseline's mode,
    the flow at each temperature, and the truth, in one row."""
    from msflow.analysis.superres import bicubic

    s = flow.scale
    side = max(input_multiple(flow) * s, size // (input_multiple(flow) * s) * input_multiple(flow) * s)
    h, w = truth.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    crop = crop_for(flow, truth[:, top : top + side, left : left + side])
    low = downscale_bicubic(crop[None], s)[0]
    panels = [low.repeat_interleave(s, -1).repeat_interleave(s, -2), bicubic(low, s)]
    if baseline is not None:
        panels.append(upscale(baseline, low, 1, 0.0)[0])
    for t in temperatures:
        panels.append(upscale(flow, low, 1, t, torch.Generator().manual_seed(seed))[0])
    panels.append(crop)
    return save_grid(torch.stack(panels), path, nrow=len(panels), scale=max(1, 128 // crop.shape[-1]))
