r"""Latent perturbation by level (Liao & He, paper 004, section 6.3 and Figure 5).

A multi-scale flow factors its latent into levels ``z = (z_1, ..., z_L)``, fine to coarse:
``z_1`` is split off first, after the fewest flow steps. The image is encoded at the centre of
its dequantization bins, ``v = (x + 1/2) / 2^{bits}``, one noise draw
``\epsilon_i \sim \mathcal N(0, T^2 I)`` is made per level, and for ``k = 1 .. L`` two images
are decoded:

.. math::

    \text{keep}_k = g(z_1, \dots, z_k, \epsilon_{k+1}, \dots, \epsilon_L), \qquad
    \text{resample}_k = g(\epsilon_1, \dots, \epsilon_k, z_{k+1}, \dots, z_L).

``keep_L`` is the exact reconstruction and ``resample_L`` a sample from the prior. The paper
finds that the coarse levels carry most of the image: ``resample_k`` stays close to the input
while ``keep_k`` for small ``k`` does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from msflow.core import evaluates
from msflow.models.multiscale import MultiScaleFlow


def mix_levels(zs: Sequence[Tensor], noise: Sequence[Tensor], k: int) -> tuple[list[Tensor], list[Tensor]]:
    """``(keep_k, resample_k)``: the ``k`` finest levels from ``zs`` and the rest from ``noise``, and the reverse.

    The tensors are the given ones, not copies, so kept levels are bitwise those of ``zs``.

    Example:
        >>> import torch
        >>> zs, noise = [torch.zeros(1), torch.zeros(1)], [torch.ones(1), torch.ones(1)]
        >>> mix_levels(zs, noise, 1)
        ([tensor([0.]), tensor([1.])], [tensor([1.]), tensor([0.])])
    """
    if len(zs) != len(noise) or not 0 <= k <= len(zs):
        raise ValueError(f"need equally many latents and noise levels and 0 <= k <= {len(zs)}, got k={k}")
    return [*zs[:k], *noise[k:]], [*noise[:k], *zs[k:]]


@evaluates
def perturb_levels(
    model: MultiScaleFlow,
    x: Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Any = None,
) -> Tensor:
    """Figure 5 of paper 004 for integer images ``x``: originals and level-wise perturbations.

    Args:
        model: any multi-scale flow (``encode``, ``decode``, ``sample_latents``, ``dequantizer``).
        x: uint8 images ``(B, C, H, W)`` or one image ``(C, H, W)``.
        temperature: the resampled latents are ``temperature * N(0, I)``; 0 puts them at the mode.
        generator: makes the noise draw reproducible (one draw per image, shared by all columns).
        cond: condition of a conditional model, passed to ``encode`` and ``decode``.

    Returns:
        uint8 images ``(B * 2 * (L + 1), C, H, W)`` on the model's device, ``L`` the number of
        levels, in the row-major order of a grid with ``L + 1`` columns: per input image, row 1
        is ``[x, keep_1, ..., keep_L]`` and row 2 ``[x, resample_1, ..., resample_L]``. Write it
        with ``msflow.viz.save_grid(images, path, nrow=L + 1)``.

    Raises:
        DataError: ``x`` does not hold integers in ``[0, 2^bits)``.
        ShapeError: ``x`` is not of the model's image shape.

    Example:
        >>> import torch
        >>> from msflow import create_model
        >>> model = create_model("glow-mnist", hidden=8, steps=1)  # 2 levels
        >>> x = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
        >>> images = perturb_levels(model, x, temperature=0.7, generator=torch.Generator().manual_seed(0))
        >>> images.shape, images.dtype
        (torch.Size([6, 1, 28, 28]), torch.uint8)
        >>> bool(torch.equal(images[2], x))  # row 1, k = L: the exact reconstruction
        True
    """
    batch = x.unsqueeze(0) if x.dim() == 3 else x
    model.dequantizer.check(batch)
    param = next(model.parameters())
    batch = batch.to(param.device)
    v = (batch.to(param.dtype) + 0.5) / model.dequantizer.levels
    zs, _ = model.encode(v, cond)
    noise = model.sample_latents(batch.shape[0], temperature, generator)
    rows = []
    for row in (0, 1):
        columns = [
            model.dequantizer.quantize(model.decode(mix_levels(zs, noise, k)[row], cond)) for k in range(1, len(zs) + 1)
        ]
        rows.append(torch.stack([batch.to(torch.uint8), *columns], dim=1))
    return torch.stack(rows, dim=1).flatten(0, 2)
