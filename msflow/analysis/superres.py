"""Super-resolution of whole images with a multi-resolution flow, scored against a ground truth.

MRCNF's detail levels model ``p(y_s | x_{s+1})``: refining a coarse image with them is
super-resolution for free (paper 000, Figure 3). :func:`superres_from_hr` takes a
high-resolution photo as the ground truth, makes its low-resolution version with the
pyramid's own coarse map (the rounded 2x2 block averages, applied ``log2(scale)`` times),
samples finer images from it and scores each one, and the bicubic upsampling of the same
input, with PSNR and SSIM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from msflow.analysis.cond_superres import crop_for, upscale
from msflow.core import evaluation_context
from msflow.data.dataset import downsample_images
from msflow.data.pairs import downscale_bicubic
from msflow.errors import ConfigError, ShapeError
from msflow.metrics.fidelity import psnr, ssim

MAX_OUTPUT_PIXELS = 2048 * 2048
"""Largest output a super-resolution call makes (about 4 MP); crop bigger images first."""


@dataclass
class SuperResolution:
    """Inputs, samples and their scores (``scores[name] = (PSNR dB, SSIM)``; samples ``sample 1..n``).

    ``bpd`` holds the samples' conditional bits/dim when they were ranked (best of ``m``)."""

    low: Tensor
    bicubic: Tensor
    samples: Tensor
    truth: Tensor | None
    scores: dict[str, tuple[float, float]]
    bpd: Tensor | None = None


def bicubic(low: Tensor, scale: int) -> Tensor:
    """Pillow's bicubic upsampling of a uint8 ``(C, h, w)`` image by ``scale``."""
    c, h, w = low.shape
    planes = [np.asarray(Image.fromarray(p.numpy()).resize((w * scale, h * scale), Image.BICUBIC)) for p in low.cpu()]
    return torch.from_numpy(np.stack(planes))


def check_output_size(h: int, w: int, scale: int) -> None:
    """Refuse inputs whose ``scale``-times output would exceed :data:`MAX_OUTPUT_PIXELS`."""
    if h * w * scale * scale > MAX_OUTPUT_PIXELS:
        raise ShapeError(
            f"a {h}x{w} input gives a {h * scale}x{w * scale} output, more than {MAX_OUTPUT_PIXELS:,} pixels; "
            "crop the image first"
        )


def superres(
    model: nn.Module,
    image: Tensor,
    scale: int | None,
    temperature: float = 1.0,
    n: int = 4,
    generator: torch.Generator | None = None,
    hr: bool = False,
    best_of: int = 1,
) -> SuperResolution:
    """Super-resolve one uint8 ``(C, H, W)`` image ``scale`` (2 or 4) times with ``model.superres``.

    A conditional model (``cflow-sr*``, ``factorized-sr*``) upscales by its own scale (``scale``
    may be ``None``), on an input of any size, and with ``hr=True`` reduces the ground truth by
    antialiased bicubic, as its training pairs were made.

    With ``hr=True`` the image is the ground truth: it is cropped to a multiple of ``scale``,
    reduced by block averaging, and the samples and the bicubic baseline are scored against it.
    Otherwise it is the low-resolution input and nothing is scored.

    ``best_of=m > 1`` (CAFLOW only, ``m >= n``) draws ``m`` samples and keeps the ``n`` of highest
    conditional likelihood, best first (:func:`msflow.analysis.translate.best_of`).

    Example:
        >>> import torch, msflow
        >>> model = msflow.create_model("mrcnf-cifar10", resolutions=3, steps=1, hidden=4)
        >>> photo = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
        >>> out = superres(model, photo, scale=4, n=2, hr=True)
        >>> out.samples.shape, sorted(out.scores)
        (torch.Size([2, 3, 20, 24]), ['bicubic', 'sample 1', 'sample 2'])
    """
    if best_of > 1:
        from msflow.analysis.translate import can_rank

        if not can_rank(model):
            raise ConfigError(
                f"best of {best_of} ranks samples by conditional likelihood under shared noise, which a "
                f"{type(model).__name__} does not give; use a CAFLOW model (caflow-sr4) or drop --best-of"
            )
        if best_of < n:
            raise ConfigError(f"keeping the best {n} of {best_of} samples needs best_of >= n")
    if hasattr(model, "cond_shape"):
        return _conditional_superres(model, image, scale, temperature, n, generator, hr, best_of)
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
    check_output_size(*low.shape[-2:], scale)
    device = next(model.parameters()).device
    with evaluation_context(model):
        samples = model.superres(low[None].to(device), levels, temperature, n, generator).cpu()
    up = bicubic(low, scale)
    return SuperResolution(low, up, samples, truth, _fidelity(up, samples, truth))


def _conditional_superres(
    model: nn.Module,
    image: Tensor,
    scale: int | None,
    temperature: float,
    n: int,
    generator: torch.Generator | None,
    hr: bool,
    best_of: int = 1,
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
    check_output_size(*low.shape[-2:], model.scale)
    bpd = None
    if best_of > 1:
        from msflow.analysis.translate import best_of as keep_best

        seed = 0 if generator is None else generator.initial_seed()
        samples, bpd = keep_best(model, low[None], n, best_of, temperature, generator, score_seed=seed)
    else:
        samples = upscale(model, low, n, temperature, generator)
    up = bicubic(low, model.scale)
    return SuperResolution(low, up, samples, truth, _fidelity(up, samples, truth), bpd)


def _fidelity(up: Tensor, samples: Tensor, truth: Tensor | None) -> dict[str, tuple[float, float]]:
    """``(PSNR, SSIM)`` of the bicubic upsampling and of each sample against the ground truth."""
    if truth is None:
        return {}
    scores = {"bicubic": (psnr(up, truth), ssim(up, truth))}
    for i, sample in enumerate(samples):
        scores[f"sample {i + 1}"] = (psnr(sample, truth), ssim(sample, truth))
    return scores


__all__ = ["MAX_OUTPUT_PIXELS", "SuperResolution", "bicubic", "check_output_size", "superres"]
