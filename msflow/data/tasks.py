"""Any image source through any task recipe: the data of ``data.task`` configs.

``task_data(source, task, split, ...)`` gives the training split as a :class:`CropStream`
(random crops drawn on demand) and the test split as fixed crops in memory. Sources:

- ``photos``: the bundled colour photographs (:data:`~msflow.data.photos.PHOTOGRAPHS`);
- ``folder``: your photos of any size under ``root`` (:class:`~msflow.data.sources.FolderImages`);
- ``shapes-seg``: the bundled synthetic vessel-segmentation set (segmentation only; fixed
  64x64 pairs held in memory, so ``crop`` does not apply).

The dataset names of earlier versions (``photos-sr2``, ``photos-sr4``, ``photos-colorize``,
``photos-inpaint``, ``photos-sketch``) mean the ``photos`` source with that task
(:data:`TASK_ALIASES`).

Example:
    >>> train = task_data("photos", "sr4", "train", seed=0)
    >>> test = task_data("photos", "sr4", "test", seed=0, test_crops=16)
    >>> train.image_shape, train.cond_shape, len(test)
    ((3, 32, 32), (3, 8, 8), 64)
"""

from __future__ import annotations

import os
from collections.abc import Callable

from msflow.data.pairs import PairedDataset
from msflow.data.recipes import PLAIN, RECIPES
from msflow.data.segmentation import load_shape_segmentation
from msflow.data.sources import BundledPhotos, FolderImages, ImageSource
from msflow.data.stream import CropStream, fixed_pairs
from msflow.errors import DataError

SOURCES = ("photos", "folder", "shapes-seg")
"""Image sources a task can draw from."""

TASK_ALIASES = {
    "photos-sr2": "sr2",
    "photos-sr4": "sr4",
    "photos-colorize": "colorize",
    "photos-inpaint": "inpaint",
    "photos-sketch": "sketch",
}
"""Dataset names of earlier versions -> the task they mean on the ``photos`` source."""

DEFAULT_CROP = 32
"""Side of the crops when ``data.crop`` is not set (the presets' target size)."""


def _bundled_photos(split: str, root: str | os.PathLike[str] | None, crop: int, masks: str | None) -> ImageSource:
    if masks is not None:
        raise DataError("data.masks needs your own photos: set data.name=folder and data.root=FOLDER")
    return BundledPhotos(split)


def _folder(split: str, root: str | os.PathLike[str] | None, crop: int, masks: str | None) -> ImageSource:
    return FolderImages(root, split, min_side=crop, masks=masks)


_PHOTO_SOURCES: dict[str, Callable[..., ImageSource]] = {"photos": _bundled_photos, "folder": _folder}
"""``data.name`` -> ``open(split, root, crop, masks)``: the photo sources crops are drawn from."""


def _source(name: str, split: str, root: str | os.PathLike[str] | None, crop: int, masks: str | None) -> ImageSource:
    if name not in _PHOTO_SOURCES:
        raise DataError(f"data.task draws crops from an image source: set data.name to one of {', '.join(SOURCES)}")
    return _PHOTO_SOURCES[name](split, root, crop, masks)


def task_data(
    source: str,
    task: str | None,
    split: str,
    seed: int,
    root: str | os.PathLike[str] | None = None,
    crop: int | None = None,
    holes: str = "centre",
    masks: str | None = None,
    test_crops: int = 128,
) -> CropStream | PairedDataset:
    """One split of ``task`` on ``source``: a :class:`CropStream` for ``"train"``, fixed crops for ``"test"``.

    ``task=None`` gives plain crops for unconditional models (an :class:`ImageDataset` for ``"test"``).

    Raises:
        DataError: an unknown task, split or source, a task the source cannot feed, a bad
            folder (one line naming the fix), or a crop the task cannot use.
    """
    if task is not None and task not in RECIPES:
        raise DataError(f"unknown task {task!r}: choose one of {', '.join(RECIPES)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    if source == "shapes-seg":
        if task != "segment" or crop is not None:
            raise DataError(
                "shapes-seg is a fixed set of 64x64 segmentation pairs: use data.task=segment without data.crop"
            )
        return load_shape_segmentation(split)
    if task == "segment" and masks is None:
        raise DataError("data.task=segment trains on your masks: set data.masks=FOLDER (one mask per photo, same name)")
    if holes == "folder" and masks is None:
        raise DataError("data.holes=folder hides the pixels of your masks: set data.masks=FOLDER")
    side = crop or DEFAULT_CROP
    recipe = PLAIN if task is None else RECIPES[task]
    recipe.check_crop(side)
    photos = _source(source, split, root, side, masks)
    name = source if task is None else f"{source}-{task}"
    if split == "train":
        return CropStream(photos, recipe, side, seed, name=name, holes=holes)
    return fixed_pairs(photos, recipe, side, seed, test_crops, name=name, holes=holes)
