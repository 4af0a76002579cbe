"""How exactly a trained flow inverts: the reconstruction error ``max |v - f^-1(f(v))|``.

A flow is invertible on paper, but in floating point a badly conditioned model (large coupling
scales, near-singular 1x1 convolutions; Liao & He, Behrmann et al.) can lose the input: its
bits/dim are then computed for a function it cannot undo. The error is measured on the
dequantized images ``v`` in [0, 1), where one 8-bit level is 1/256.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msflow.core import evaluates
from msflow.data import ImageDataset

#: Above this (a quarter of one 8-bit level) reconstruction could change a pixel's value.
WARN_ABOVE = 1e-3


@evaluates
def reconstruction_errors(
    model: nn.Module, dataset: ImageDataset, batch_size: int = 500, seed: int = 0, max_images: int | None = None
) -> Tensor:
    """Per-image ``max_i |v_i - f^{-1}(f(v))_i|`` (float64, on the CPU) for the first images.

    ``v`` is the model's own seeded dequantization of each image, in the model's dtype, so a
    float64 model measures float64 round trips.

    Example:
        >>> import torch
        >>> from msflow import create_model
        >>> from msflow.data import ImageDataset
        >>> model = create_model("glow-mnist", steps=1, hidden=8)
        >>> images = ImageDataset(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8))
        >>> bool(reconstruction_errors(model, images).max() < 1e-5)
        True
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    images = dataset.images if max_images is None else dataset.images[:max_images]
    conds = getattr(dataset, "conds", None)  # a conditional flow's conditions
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        if conds is None:
            v, _ = model.dequantizer(x, generator=generator, dtype=dtype)
            cond = None
        else:
            cond = conds[start : start + len(x)].to(device)
            v = model.dequantize(x, cond, generator)
        zs, _ = model.encode(v, cond)
        error = (model.decode(zs, cond) - v).abs().flatten(1).amax(dim=1)
        out.append(error.to(torch.float64).cpu())
    model.train(was_training)
    return torch.cat(out)
