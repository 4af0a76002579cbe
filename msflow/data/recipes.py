r"""Task recipes: how one photo crop becomes a (target, condition) pair.

A recipe is the task half of "a task is a recipe, the photos are a source": any
:mod:`~msflow.data.sources` source feeds any recipe. Every recipe takes a ``uint8`` RGB crop
``(1, 3, S + 2m, S + 2m)`` (``m`` its :attr:`~Recipe.margin` of context, 0 for all but sketch)
and, where the task uses one, the crop's ``(1, 1, ...)`` mask of 0 and 1, plus a generator for
its own randomness, and returns ``uint8`` ``target (C, S, S)`` and ``condition``:

- ``sr2``, ``sr4``: the crop given its antialiased bicubic ``1/f`` downscale
  (:func:`~msflow.data.pairs.downscale_bicubic`, as MATLAB's ``imresize``);
- ``colorize``: the crop given its ITU-R 601 luma :math:`Y \approx 0.299R + 0.587G + 0.114B`;
- ``inpaint``: the crop given :math:`x \odot (1 - M)`: ``M`` is the central square of half the
  side (``holes="centre"``, the paper's fixed mask), one to three random boxes of a quarter to
  half the side (``holes="boxes"``), or the user's mask (``holes="folder"``, nonzero = hidden);
- ``sketch``: the crop given its binary Canny edge map (0/255), drawn on the crop *with a
  margin* of context and then cut, so edges run through the crop borders as in the photo;
- ``segment``: the user's binary mask (``n_bits = 1``) given the crop;
- :data:`PLAIN` (no task, for unconditional models): the crop alone.

Example:
    >>> import torch
    >>> crop = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    >>> target, cond = RECIPES["sr4"].pair(crop, None, torch.Generator())
    >>> tuple(target.shape), tuple(cond.shape)
    ((3, 32, 32), (3, 8, 8))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from msflow.data.pairs import downscale_bicubic
from msflow.data.translation import apply_mask, central_mask, sketch_edges, to_grey
from msflow.errors import DataError

HOLES = ("centre", "boxes", "folder")
"""How inpainting hides pixels: the central square, random boxes, or the user's mask folder."""


@dataclass(frozen=True)
class Recipe:
    """One task: its :class:`~msflow.data.pairs.PairedDataset` task name, condition channels and scale."""

    task: str
    cond_channels: int = 3
    scale: int = 1
    margin: int = 0

    @property
    def n_bits(self) -> int:
        """Bits per target pixel: 1 for segmentation masks, else 8."""
        return 1 if self.task == "segment" else 8

    @property
    def target_channels(self) -> int:
        """Target channels: 1 for segmentation masks, else 3 (RGB)."""
        return 1 if self.task == "segment" else 3

    def check_crop(self, crop: int) -> None:
        """Raise :class:`DataError` unless ``crop`` suits this task (a multiple of the scale)."""
        if crop % self.scale:
            raise DataError(f"data.crop={crop} cannot be downscaled by {self.scale}: use a multiple of {self.scale}")

    def pair(
        self, crop: Tensor, mask: Tensor | None, rng: torch.Generator, holes: str = "centre"
    ) -> tuple[Tensor, Tensor]:
        """``(target, condition)`` of one crop (see the module notes)."""
        m = self.margin
        core = crop[..., m : crop.shape[-2] - m, m : crop.shape[-1] - m] if m else crop
        if self.task == "plain":  # an unconditional model's images: no condition
            return core[0], core.new_empty(0)
        if self.task == "superres":
            return core[0], downscale_bicubic(core.contiguous(), self.scale)[0]
        if self.task == "colorize":
            return core[0], to_grey(core)[0]
        if self.task == "sketch":
            edges = sketch_edges(crop.contiguous())
            return core[0], edges[0, :, m : crop.shape[-2] - m, m : crop.shape[-1] - m]
        if self.task == "segment":
            if mask is None:
                raise DataError("segmentation needs a mask per photo: set data.masks=FOLDER (named as the photos)")
            return mask[0], core[0]
        return core[0], apply_mask(core, _holes(core.shape[-2:], mask, rng, holes))[0]


def _holes(hw: torch.Size, mask: Tensor | None, rng: torch.Generator, holes: str) -> Tensor:
    h, w = hw
    if holes == "centre":
        return central_mask(h, w)
    if holes == "folder":
        if mask is None:
            raise DataError("data.holes=folder hides the pixels of your masks: set data.masks=FOLDER")
        return mask[0, 0] > 0
    out = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 4, (), generator=rng))):
        bh, bw = (int(torch.randint(max(1, s // 4), max(2, s // 2 + 1), (), generator=rng)) for s in (h, w))
        top, left = (int(torch.randint(0, s - b + 1, (), generator=rng)) for s, b in ((h, bh), (w, bw)))
        out[top : top + bh, left : left + bw] = True
    return out


RECIPES: dict[str, Recipe] = {
    "sr2": Recipe("superres", 3, 2),
    "sr4": Recipe("superres", 3, 4),
    "colorize": Recipe("colorize", 1),
    "inpaint": Recipe("inpaint", 3),
    "sketch": Recipe("sketch", 1, margin=8),
    "segment": Recipe("segment", 3),
}
"""``data.task`` -> its recipe."""

PLAIN = Recipe("plain", cond_channels=0)
"""Random crops for unconditional models (``data.crop`` without ``data.task``): the crop, no condition."""
