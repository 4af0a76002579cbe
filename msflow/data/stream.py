"""Streamed task data: random crops drawn from a source on demand, and fixed seeded crops for testing.

Training draws are a pure function of ``(seed, k)``, ``k`` the draw's index in the run
(``step * batch_size + j``): a generator seeded by both picks the photo (uniformly, so every
photo weighs the same whatever its size), the crop's position and a horizontal flip, and any
randomness of the recipe (inpainting boxes). Nothing depends on which worker process made a
draw or on what was drawn before, so a run resumed after a crash sees exactly the batches it
would have seen, and ``torch.utils.data`` workers can decode photos in parallel with training.
Only the photos being cropped are ever decoded, so memory does not grow with the folder.

Test pairs are fixed: a grid of non-overlapping crops of each test photo, at most
``per_image`` of them per photo (a seeded choice when there are more), made once and held in
memory as a :class:`~msflow.data.pairs.PairedDataset`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from msflow.data.dataset import ImageDataset
from msflow.data.pairs import PairedDataset
from msflow.data.recipes import Recipe
from msflow.data.sources import ImageSource

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: seeds of nearby draws share no structure


def draw_seed(seed: int, k: int) -> int:
    """The generator seed of draw ``k`` of a run seeded ``seed`` (a 63-bit mix of both)."""
    return (seed * _MIX + (k + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)


def _region(
    image: np.ndarray, mask: np.ndarray | None, top: int, left: int, side: int, margin: int
) -> tuple[Tensor, Tensor | None]:
    """The ``side + 2 margin`` square at ``(top, left)`` of an image (and its mask), as ``(1, C, s, s)``."""
    if margin:
        # Context beyond the photo's border is its mirror image, as Canny would see a larger photo.
        image = np.pad(image, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
        mask = None if mask is None else np.pad(mask, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
    span = (slice(top, top + side + 2 * margin), slice(left, left + side + 2 * margin))

    def cut(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a[span].transpose(2, 0, 1)))[None]

    return cut(image), None if mask is None else cut(mask)


class CropStream(Dataset):
    """Training pairs of ``crop x crop`` random crops, ``stream[k]`` a pure function of ``(seed, k)``.

    Args:
        source: the photos.
        recipe: the task that turns a crop into ``(target, condition)``.
        crop: side of the square target crops (a multiple of the recipe's scale).
        seed: the run's seed.
        name: dataset name for logs and checkpoints.
        holes: how inpainting hides pixels (:data:`~msflow.data.recipes.HOLES`).
        flips: mirror half of the crops left to right.

    Example:
        >>> from msflow.data.recipes import RECIPES
        >>> from msflow.data.sources import BundledPhotos
        >>> stream = CropStream(BundledPhotos("train"), RECIPES["sr2"], 32, seed=0)
        >>> target, cond = stream[5]
        >>> tuple(target.shape), tuple(cond.shape), torch.equal(stream[5][0], target)
        ((3, 32, 32), (3, 16, 16), True)
    """

    def __init__(
        self,
        source: ImageSource,
        recipe: Recipe,
        crop: int,
        seed: int,
        name: str = "stream",
        holes: str = "centre",
        flips: bool = True,
    ) -> None:
        recipe.check_crop(crop)
        self.source, self.recipe, self.crop, self.seed = source, recipe, crop, seed
        self.name, self.holes, self.flips = name, holes, flips
        self.task, self.scale, self.n_bits = recipe.task, recipe.scale, recipe.n_bits
        self.image_shape = (recipe.target_channels, crop, crop)
        plain = recipe.cond_channels == 0
        self.cond_shape = None if plain else (recipe.cond_channels, crop // recipe.scale, crop // recipe.scale)

    def __len__(self) -> int:
        # Draws never run out; the length only names how many make "one pass" in progress reports.
        return len(self.source)

    def __getitem__(self, k: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(draw_seed(self.seed, int(k)))
        i = int(torch.randint(len(self.source), (), generator=g))
        h, w = self.source.size(i)
        top = int(torch.randint(h - self.crop + 1, (), generator=g))
        left = int(torch.randint(w - self.crop + 1, (), generator=g))
        flip = self.flips and bool(torch.rand((), generator=g) < 0.5)
        image, mask = _region(self.source.read(i), self.source.read_mask(i), top, left, self.crop, self.recipe.margin)
        if flip:
            image, mask = image.flip(-1), None if mask is None else mask.flip(-1)
        target, cond = self.recipe.pair(image, mask, g, self.holes)
        return target.contiguous(), cond.contiguous()

    def __repr__(self) -> str:
        return f"CropStream(name={self.name!r}, task={self.task!r}, photos={len(self.source)}, crop={self.crop})"


def fixed_pairs(
    source: ImageSource,
    recipe: Recipe,
    crop: int,
    seed: int,
    per_image: int,
    name: str = "pairs",
    holes: str = "centre",
) -> PairedDataset | ImageDataset:
    """Test pairs: non-overlapping ``crop x crop`` grid crops, at most ``per_image`` per photo (seeded choice).

    With :data:`~msflow.data.recipes.PLAIN`, the crops alone as an :class:`ImageDataset`.

    Example:
        >>> from msflow.data.recipes import RECIPES
        >>> from msflow.data.sources import BundledPhotos
        >>> ds = fixed_pairs(BundledPhotos("test"), RECIPES["colorize"], 32, seed=0, per_image=8)
        >>> len(ds), ds.image_shape, ds.cond_shape
        (32, (3, 32, 32), (1, 32, 32))
    """
    recipe.check_crop(crop)
    targets, conds = [], []
    for i in range(len(source)):
        h, w = source.size(i)
        cells = [(r * crop, c * crop) for r in range(h // crop) for c in range(w // crop)]
        if len(cells) > per_image:
            g = torch.Generator().manual_seed(draw_seed(seed, i))
            cells = [cells[j] for j in sorted(torch.randperm(len(cells), generator=g)[:per_image].tolist())]
        photo, photo_mask = source.read(i), source.read_mask(i)
        for j, (top, left) in enumerate(cells):
            image, mask = _region(photo, photo_mask, top, left, crop, recipe.margin)
            g = torch.Generator().manual_seed(draw_seed(seed + 1, i * 1_000_003 + j))
            target, cond = recipe.pair(image, mask, g, holes)
            targets.append(target)
            conds.append(cond)
    if recipe.cond_channels == 0:
        return ImageDataset(torch.stack(targets), name=name)
    return PairedDataset(torch.stack(targets), torch.stack(conds), recipe.task, name, recipe.n_bits)
