r"""Super-resolution of whole images, of any size, with a multi-resolution or conditional flow,
scored against a ground truth and against its own input.

MRCNF's detail levels model ``p(y_s | x_{s+1})``: refining a coarse image with them is
super-resolution for free (paper 000, Figure 3). A conditional model (``cflow-sr*``,
``factorized-sr*``, ``caflow-sr4``) samples ``p(HR | LR)``. :func:`superres` takes a
low-resolution image, or with ``hr=True`` a high-resolution photo as the ground truth (reduced
as the model's training inputs were made: the pyramid's 2x2 block averages for MRCNF,
antialiased bicubic for the conditional models), samples finer images and scores them, and the
bicubic upsampling of the same input, with PSNR and SSIM.

Inputs too big to run whole go through overlapping tiles (:mod:`msflow.analysis.tiling`), so
memory is bounded by the tile. Consistency is measured as SRFlow does, with the **LR-PSNR**: the
output reduced by the model's own reduction ``D`` against the input ``x``,

.. math::

    \mathrm{LR\text{-}PSNR}(y) = \mathrm{PSNR}(D(y), x),

high when the output explains its input (MRCNF's blocks average to their input pixel by
construction, up to rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from msflow.analysis.cond_superres import crop_for
from msflow.analysis.ranking import can_rank
from msflow.analysis.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, plan_tiles, run_tiled, tiled_best_of, tiled_upscale
from msflow.core import evaluation_context
from msflow.data.dataset import downsample_images
from msflow.data.pairs import downscale_bicubic
from msflow.errors import ConfigError, ShapeError
from msflow.metrics.fidelity import psnr, ssim

MAX_OUTPUT_PIXELS = 2**27
"""Most output pixels one call holds, all samples together (about 134 MP: 400 MB of RGB); tiles
bound the model's memory, this bounds the results'. Lower ``n`` or crop bigger images first."""


@dataclass
class SuperResolution:
    """Inputs, samples and their scores (``scores[name] = (PSNR dB, SSIM)``; samples ``sample 1..n``).

    ``bpd`` holds the samples' conditional bits/dim when they were ranked (best of ``m``; with
    several tiles, the area-weighted mean of the tiles' ``k``-th best). ``lr_psnr[name]`` is the
    LR-PSNR (dB) of the bicubic upsampling and of each sample; ``tiles`` how many tiles ran."""

    low: Tensor
    bicubic: Tensor
    samples: Tensor
    truth: Tensor | None
    scores: dict[str, tuple[float, float]]
    bpd: Tensor | None = None
    lr_psnr: dict[str, float] = field(default_factory=dict)
    tiles: int = 1


def bicubic(low: Tensor, scale: int) -> Tensor:
    """Pillow's bicubic upsampling of a uint8 ``(C, h, w)`` image by ``scale``."""
    c, h, w = low.shape
    planes = [np.asarray(Image.fromarray(p.numpy()).resize((w * scale, h * scale), Image.BICUBIC)) for p in low.cpu()]
    return torch.from_numpy(np.stack(planes))


def check_output_size(h: int, w: int, scale: int, n: int = 1) -> None:
    """Refuse inputs whose ``n`` ``scale``-times outputs would exceed :data:`MAX_OUTPUT_PIXELS` in all."""
    total = n * h * w * scale * scale
    if total > MAX_OUTPUT_PIXELS:
        what = f"{n} outputs of {h * scale}x{w * scale}" if n > 1 else f"a {h * scale}x{w * scale} output"
        fix = "lower -n or crop the image" if n > 1 and h * w * scale * scale <= MAX_OUTPUT_PIXELS else "crop the image"
        raise ShapeError(
            f"a {h}x{w} input gives {what}, {total:,} pixels, more than the {MAX_OUTPUT_PIXELS:,} one run holds; {fix}"
        )


def lr_psnr(image: Tensor, low: Tensor, reduce: Callable[[Tensor, int], Tensor] = downscale_bicubic) -> float:
    """LR-PSNR (dB): ``image`` ``(C, H, W)`` reduced to ``low``'s size by ``reduce`` (antialiased bicubic
    by default) against ``low`` ``(C, h, w)``; ``H / h`` is the scale.

    Example:
        >>> low = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
        >>> lr_psnr(low.repeat_interleave(2, -1).repeat_interleave(2, -2), low, downsample_images)
        inf
    """
    scale = image.shape[-1] // low.shape[-1]
    return psnr(reduce(image[None], scale)[0], low)


def superres(
    model: nn.Module,
    image: Tensor,
    scale: int | None,
    temperature: float = 1.0,
    n: int = 4,
    generator: torch.Generator | None = None,
    hr: bool = False,
    best_of: int = 1,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = False,
) -> SuperResolution:
    """Super-resolve one uint8 ``(C, H, W)`` image ``scale`` (2 or 4) times with ``model.superres``.

    A conditional model (``cflow-sr*``, ``factorized-sr*``) upscales by its own scale (``scale``
    may be ``None``), on an input of any size, and with ``hr=True`` reduces the ground truth by
    antialiased bicubic, as its training pairs were made.

    With ``hr=True`` the image is the ground truth: it is cropped to a multiple of ``scale``,
    reduced by block averaging, and the samples and the bicubic baseline are scored against it.
    Otherwise it is the low-resolution input and nothing is scored.

    ``best_of=m > 1`` (CAFLOW only, ``m >= n``) draws ``m`` samples and keeps the ``n`` of highest
    conditional likelihood, best first (:func:`msflow.analysis.ranking.best_of`; per tile).

    Outputs larger than ``tile`` pixels on a side are made in tiles of ``tile`` output pixels
    that overlap by ``overlap`` (:mod:`msflow.analysis.tiling`; ``progress`` shows a bar), so
    memory stays bounded; the output's sides are exactly ``scale`` times the input's.

    Example:
        >>> import torch, msflow
        >>> model = msflow.create_model("mrcnf-cifar10", resolutions=3, steps=1, hidden=4)
        >>> photo = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
        >>> out = superres(model, photo, scale=4, n=2, hr=True)
        >>> out.samples.shape, sorted(out.scores), sorted(out.lr_psnr)
        (torch.Size([2, 3, 20, 24]), ['bicubic', 'sample 1', 'sample 2'], ['bicubic', 'sample 1', 'sample 2'])
    """
    if best_of > 1:
        if not can_rank(model):
            raise ConfigError(
                f"best of {best_of} ranks samples by conditional likelihood under shared noise, which a "
                f"{type(model).__name__} does not give; use a CAFLOW model (caflow-sr4) or drop --best-of"
            )
        if best_of < n:
            raise ConfigError(f"keeping the best {n} of {best_of} samples needs best_of >= n")
    if model.conditional:
        return _conditional_superres(
            model, image, scale, temperature, n, generator, hr, best_of, tile, overlap, progress
        )
    levels = {2: 1, 4: 2}.get(scale)
    if levels is None:
        raise ValueError(f"scale must be 2 or 4, got {scale}")
    if levels >= model.num_resolutions:
        raise ConfigError(
            f"this {model.num_resolutions}-resolution model has {model.num_resolutions - 1} detail level(s): "
            f"it can super-resolve up to x{2 ** (model.num_resolutions - 1)}, not x{scale}"
        )
    truth = None
    if hr:
        h, w = (d // scale * scale for d in image.shape[-2:])
        if h == 0 or w == 0:
            raise ShapeError(f"a {image.shape[-2]}x{image.shape[-1]} image is smaller than the scale {scale}")
        truth = image[:, :h, :w]
        low = downsample_images(truth[None], scale)[0]
    else:
        low = image
    check_output_size(*low.shape[-2:], scale, n)
    device = next(model.parameters()).device
    plan = plan_tiles(*low.shape[-2:], scale, tile, overlap)
    with evaluation_context(model):
        samples = run_tiled(
            lambda c: model.superres(c[None].to(device), levels, temperature, n, generator), low, plan, progress
        )
    up = bicubic(low, scale)
    consistency = _lr_psnr(up, samples, low, downsample_images)
    return SuperResolution(low, up, samples, truth, _fidelity(up, samples, truth), None, consistency, plan.count)


def _conditional_superres(
    model: nn.Module,
    image: Tensor,
    scale: int | None,
    temperature: float,
    n: int,
    generator: torch.Generator | None,
    hr: bool,
    best_of: int,
    tile: int,
    overlap: int,
    progress: bool,
) -> SuperResolution:
    """:func:`superres` with a conditional model (``cflow-sr*``, ``factorized-sr*``, ``caflow-sr4``):
    LR by antialiased bicubic."""
    if scale not in (None, model.scale):
        raise ConfigError(
            f"this model does x{model.scale} super-resolution, not x{scale}; drop --scale or pass {model.scale}"
        )
    truth = None
    if hr:
        truth = crop_for(model, image)
        low = downscale_bicubic(truth[None], model.scale)[0]
    else:
        low = image
    check_output_size(*low.shape[-2:], model.scale, n)
    bpd = None
    if best_of > 1:
        seed = 0 if generator is None else generator.initial_seed()
        samples, bpd, tiles = tiled_best_of(
            model, low, n, best_of, temperature, generator, seed, tile, overlap, progress
        )
    else:
        samples, tiles = tiled_upscale(model, low, n, temperature, generator, tile, overlap, progress)
    up = bicubic(low, model.scale)
    scores, consistency = _fidelity(up, samples, truth), _lr_psnr(up, samples, low, downscale_bicubic)
    return SuperResolution(low, up, samples, truth, scores, bpd, consistency, tiles)


def _fidelity(up: Tensor, samples: Tensor, truth: Tensor | None) -> dict[str, tuple[float, float]]:
    """``(PSNR, SSIM)`` of the bicubic upsampling and of each sample against the ground truth."""
    if truth is None:
        return {}
    scores = {"bicubic": (psnr(up, truth), ssim(up, truth))}
    for i, sample in enumerate(samples):
        scores[f"sample {i + 1}"] = (psnr(sample, truth), ssim(sample, truth))
    return scores


def _lr_psnr(up: Tensor, samples: Tensor, low: Tensor, reduce: Callable[[Tensor, int], Tensor]) -> dict[str, float]:
    """LR-PSNR of the bicubic upsampling and of each sample (:func:`lr_psnr`)."""
    values = {"bicubic": lr_psnr(up, low, reduce)}
    for i, sample in enumerate(samples):
        values[f"sample {i + 1}"] = lr_psnr(sample, low, reduce)
    return values


__all__ = ["MAX_OUTPUT_PIXELS", "SuperResolution", "bicubic", "check_output_size", "lr_psnr", "superres"]
