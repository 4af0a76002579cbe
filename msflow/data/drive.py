"""DRIVE retinal vessel segmentation (Staal et al., 2004), read from your copy of the data.

DRIVE is the benchmark of paper 003, section 5.2: 40 RGB fundus photos of 565x584 pixels, 20
for training and 20 for testing, each with a manual vessel annotation and a field-of-view
(FOV) mask. msflow cannot ship it; after registering and downloading it, point ``root`` at the
folder that holds ``training/`` and ``test/``:

.. code-block:: text

    root/training/images/21_training.tif      RGB photo
    root/training/1st_manual/21_manual1.gif   vessels: 255, background: 0
    root/training/mask/21_training_mask.gif   inside the FOV: 255, outside: 0
    root/test/images/01_test.tif  (1st_manual/01_manual1.gif, mask/01_test_mask.gif)

Files are paired by the number before the first underscore (``21_...``; ``01`` and ``1``
match), so renamed or converted files (PNG instead of GIF) work as long as they keep it.
Files without such a number (``Thumbs.db``, ``README``) are ignored; the second observer's
``2nd_manual`` folder is not read. Pixels are read with Pillow, as by the folder reader.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from msflow.data._root import require_root
from msflow.data.folder import IMAGE_SUFFIXES, read_image
from msflow.data.pairs import PairedDataset
from msflow.errors import DataError

_FOLDERS = {"train": "training", "test": "test"}
_EXPECTS = (
    "the DRIVE folders training/ and test/, each with images/ (*.tif), 1st_manual/ (*_manual1.gif) "
    "and mask/ (*_mask.gif)"
)
_SUFFIXES = IMAGE_SUFFIXES | {".tif", ".tiff", ".gif"}
_NUMBER = re.compile(r"(\d+)_")


def _numbered(folder: Path, holds: str) -> dict[int, Path]:
    """``number -> file`` for the image files of ``folder`` whose names start with ``NUMBER_``."""
    if not folder.is_dir():
        raise DataError(f"DRIVE folder {folder} is missing: it should hold {holds}")
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _NUMBER.match(path.name)
        if match is None or path.suffix.lower() not in _SUFFIXES or not path.is_file():
            continue
        number = int(match.group(1))
        if number in files:
            raise DataError(f"{files[number]} and {path} both have number {number}: keep one file per number")
        files[number] = path
    return files


def _match(images: dict[int, Path], others: dict[int, Path], what: str, expected: str) -> list[Path]:
    """The file of ``others`` for each image, in image order; a missing or extra file is an error."""
    for number, image in images.items():
        if number not in others:
            name = expected.format(image.name.split("_")[0])
            raise DataError(f"image {image} has no {what}: expected {name} (any image suffix) next to the others")
    for number, other in others.items():
        if number not in images:
            raise DataError(f"{what} {other} has no image: expected an image numbered {number} in the images folder")
    return [others[n] for n in images]


def _read_binary(path: Path, shape: tuple[int, int], image: Path, what: str) -> np.ndarray:
    """A 0/255 annotation as ``uint8 (1, H, W)`` of 0 and 1, checked against its image's size."""
    pixels = read_image(path)
    if pixels.shape[:2] != shape:
        (h, w), (h0, w0) = pixels.shape[:2], shape
        raise DataError(f"{what} {path} is {w}x{h} but its image {image} is {w0}x{h0}: they must have one size")
    if pixels.shape[2] == 3 and not (pixels == pixels[:, :, :1]).all():
        raise DataError(f"{what} {path} is a colour image: expected black (0) and white (255) only")
    values = np.unique(pixels)
    if not set(values.tolist()) <= {0, 255}:
        shown = ", ".join(map(str, values[:6])) + (", ..." if len(values) > 6 else "")
        raise DataError(f"{what} {path} holds values {shown}: expected 0 (background) and 255 (foreground) only")
    return (pixels[None, :, :, 0] == 255).astype(np.uint8)


def load_drive(split: str, root: str | os.PathLike[str] | None = None) -> PairedDataset:
    """DRIVE as segmentation pairs: vessel masks (targets, 0/1) given the fundus photos (conditions).

    Split ``"train"`` reads ``root/training``, ``"test"`` reads ``root/test`` (20 images each
    in the original data), in order of their numbers. The field-of-view masks become the
    ``fov`` attribute ``(N, 1, H, W)`` of 0 and 1: the pixels that scores count.

    Raises:
        DataError: a missing folder, an image without its annotation or FOV mask (the file is
            named), an annotation without its image, files of different sizes, or annotations
            that are not black and white.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> test = pathlib.Path(tmp.name) / "test"
        >>> files = {"images": "01_test.tif", "1st_manual": "01_manual1.gif", "mask": "01_test_mask.gif"}
        >>> for sub, name in files.items():
        ...     (test / sub).mkdir(parents=True)
        ...     Image.new("RGB" if sub == "images" else "L", (6, 4), 255).save(test / sub / name)
        >>> ds = load_drive("test", tmp.name)
        >>> ds, ds.fov.shape
        (PairedDataset(name='drive', task='segment', n=1, target=1x4x6, cond=3x4x6), torch.Size([1, 1, 4, 6]))
        >>> tmp.cleanup()
    """
    if split not in _FOLDERS:
        raise DataError(f"unknown split {split!r} for dataset 'drive': use 'train' or 'test'")
    base = require_root(root, "drive", _EXPECTS) / _FOLDERS[split]
    if not base.is_dir():
        raise DataError(f"DRIVE folder {base} is missing: root should hold {_EXPECTS}")
    kind = _FOLDERS[split]
    images = dict(sorted(_numbered(base / "images", f"the photos (NN_{kind}.tif)").items()))
    if not images:
        raise DataError(f"no images found in {base / 'images'}: expected files named like 01_{kind}.tif")
    annotated = _numbered(base / "1st_manual", "the vessel annotations (NN_manual1.gif)")
    manuals = _match(images, annotated, "vessel annotation", "1st_manual/{}_manual1.gif")
    fov_files = _numbered(base / "mask", f"the field-of-view masks (NN_{kind}_mask.gif)")
    masks = _match(images, fov_files, "field-of-view mask", f"mask/{{}}_{kind}_mask.gif")
    photos, targets, fovs = [], [], []
    first = next(iter(images.values()))
    for image, manual, mask in zip(images.values(), manuals, masks, strict=True):
        photo = read_image(image)
        if photos and photo.shape[:2] != photos[0].shape[:2]:
            (h, w), (h0, w0) = photo.shape[:2], photos[0].shape[:2]
            raise DataError(f"image {image} is {w}x{h} but {first} is {w0}x{h0}: DRIVE images share one size")
        photos.append(photo if photo.shape[2] == 3 else photo.repeat(3, axis=2))
        targets.append(_read_binary(manual, photo.shape[:2], image, "vessel annotation"))
        fovs.append(_read_binary(mask, photo.shape[:2], image, "field-of-view mask"))
    conds = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).contiguous()
    return PairedDataset(
        torch.from_numpy(np.stack(targets)),
        conds,
        task="segment",
        name="drive",
        n_bits=1,
        fov=torch.from_numpy(np.stack(fovs)),
    )
