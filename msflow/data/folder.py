"""A folder of image files of one size (PNG, JPEG, BMP, WEBP, TIFF), read with Pillow.

Photos of any size, streamed as random crops, are :mod:`msflow.data.sources`.

Layout rules, in order:

- Split: if ``root/train`` or ``root/test`` exists, those folders are the splits. Otherwise
  every image under ``root`` is split 90/10 by hash: files are sorted by the SHA-256 of
  their path relative to ``root`` (POSIX form) and the first ``max(1, n // 10)`` are test
  (none when ``n == 1``). Hashing the relative path keeps the split the same on every
  machine and wherever the folder is moved.
- Labels: if images sit in first-level subfolders (``root/cat/x.png`` or
  ``root/train/cat/x.png``), the label is the index of that subfolder's name among the
  sorted class names (train and test share one list); deeper folders belong to their
  first-level folder. Images directly in the split folder are unlabelled (-1); mixing
  the two layouts is an error.
- Pixels: every image must have the same size. Greyscale images (modes 1, L, LA) give one
  channel; 16-bit greyscale is scaled to 8 bits (``round(v / 257)``); colour images
  (RGB, RGBA, palette, CMYK, ...) give three channels, alpha dropped. When both kinds are
  present the majority wins: greyscale images are repeated to RGB, and colour images are
  accepted in a greyscale folder only if their three channels are equal. Palette images (with
  or without transparency), CMYK and 1-bit images are converted; floating-point images are
  refused, and so is any file whose header declares more than ``PIL.Image.MAX_IMAGE_PIXELS``
  pixels (a decompression bomb), before its pixels are decoded.

Hidden files and folders (names starting with ".") are skipped.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from msflow.data._root import require_root
from msflow.data.dataset import ImageDataset
from msflow.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ONE_CHANNEL_MODES = _GREY_MODES | _SIXTEEN_BIT_MODES
_EXPECTS = "PNG, JPEG, BMP or WEBP files (one subfolder per class is optional)"


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _hash_split(root: Path, files: list[Path], split: str) -> list[int]:
    def digest(i: int) -> str:
        return hashlib.sha256(files[i].relative_to(root).as_posix().encode()).hexdigest()

    ordered = sorted(range(len(files)), key=digest)
    n_test = max(1, len(files) // 10) if len(files) > 1 else 0
    return sorted(ordered[:n_test] if split == "test" else ordered[n_test:])


def _class_names(base: Path, files: list[Path]) -> set[str]:
    return {f.relative_to(base).parts[0] for f in files if len(f.relative_to(base).parts) > 1}


def _labels(base: Path, files: list[Path], classes: list[str]) -> torch.Tensor:
    parts = [f.relative_to(base).parts for f in files]
    nested = [len(p) > 1 for p in parts]
    if any(nested) and not all(nested):
        loose = files[nested.index(False)]
        raise DataError(
            f"{base} mixes images in class subfolders with loose images such as {loose}: "
            "put every image in a class subfolder, or none"
        )
    if not classes or not all(nested):
        return torch.full((len(files),), -1, dtype=torch.int64)
    index = {name: i for i, name in enumerate(classes)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.int64)


# Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning would let a
# decompression bomb be decoded (and print a second line on stderr), so both are errors.
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def _open_error(path: Path, err: BaseException) -> DataError:
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DataError(
            f"image {path} is too large to read safely ({err}): expected at most "
            f"{Image.MAX_IMAGE_PIXELS} pixels; resize it"
        )
    if path.is_file() and path.stat().st_size == 0:
        return DataError(f"image {path} is an empty file (0 bytes): expected a PNG, JPEG, BMP or WEBP image")
    return DataError(
        f"cannot read image {path}: {err}; expected a PNG, JPEG, BMP or WEBP image: delete or replace the file"
    )


@contextmanager
def _open(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` that refuses decompression bombs; errors become a :class:`DataError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except _READ_ERRORS as err:
        raise _open_error(path, err) from None
    with image:
        try:
            yield image
        except DataError:
            raise
        except _READ_ERRORS as err:
            raise _open_error(path, err) from None


def image_header(path: Path) -> tuple[tuple[int, int], str]:
    """``((width, height), Pillow mode)`` of an image file, from its header only (cheap)."""
    with _open(path) as im:
        return im.size, im.mode


def read_image(path: Path) -> np.ndarray:
    """Read one image as ``uint8 (H, W, 1)`` (greyscale) or ``(H, W, 3)`` (colour).

    Raises:
        DataError: the file is corrupt, truncated or of an unsupported pixel mode.

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = pathlib.Path(tmp.name) / "x.png"
        >>> Image.new("RGBA", (5, 4)).save(p)
        >>> read_image(p).shape
        (4, 5, 3)
        >>> tmp.cleanup()
    """
    with _open(path) as im:
        im.load()
        if im.mode in _SIXTEEN_BIT_MODES:
            wide = np.asarray(im, dtype=np.float64).clip(0, 65535)
            return np.rint(wide / 257).astype(np.uint8)[:, :, None]
        if im.mode == "F":
            raise DataError(f"image {path} has floating-point pixels: expected 8- or 16-bit greyscale or colour")
        if im.mode in _GREY_MODES:
            return np.array(im.convert("L"))[:, :, None]
        # Palette images with transparency make Pillow warn that they should become RGBA first;
        # alpha is dropped here anyway, so converting through RGBA keeps stderr quiet.
        if im.mode in ("P", "PA"):
            return np.array(im.convert("RGBA").convert("RGB"))
        return np.array(im.convert("RGB"))


def _common_channels(files: list[Path]) -> int:
    """Check that all images share one size; return the majority channel count (1 or 3).

    Only headers are read (Pillow decodes lazily), so this is cheap enough to run over both
    splits, which keeps train and test in the same shape.
    """
    sizes, channels = {}, Counter()
    for path in files:
        sizes[path], mode = image_header(path)
        channels[1 if mode in _ONE_CHANNEL_MODES else 3] += 1
        first = files[0]
        if sizes[path] != sizes[first]:
            (w, h), (w0, h0) = sizes[path], sizes[first]
            raise DataError(f"{path} is {w}x{h} but {first} is {w0}x{h0}: resize all images to the same size")
    # Ties go to colour: repeating grey to RGB loses nothing, the reverse would.
    return 3 if channels[3] >= channels[1] else 1


def _to_channels(path: Path, image: np.ndarray, channels: int) -> np.ndarray:
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return image.repeat(3, axis=2)
    if (image == image[:, :, :1]).all():
        return image[:, :, :1]
    raise DataError(
        f"{path} is a colour image but most images in the folder are greyscale: convert it "
        "to greyscale (or convert the others to RGB)"
    )


def _stack(files: list[Path], channels: int) -> torch.Tensor:
    stacked = np.stack([_to_channels(f, read_image(f), channels) for f in files])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def load_folder(split: str, root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Images from a folder tree; see the module docstring for the split and label rules.

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = pathlib.Path(tmp.name)
        >>> for i in range(10):
        ...     Image.new("L", (6, 6), color=i).save(root / f"{i}.png")
        >>> len(load_folder("train", root)), len(load_folder("test", root))
        (9, 1)
        >>> tmp.cleanup()
    """
    root_path = require_root(root, "folder", _EXPECTS)
    split_dirs = [root_path / s for s in ("train", "test") if (root_path / s).is_dir()]
    base = root_path / split if split_dirs else root_path
    if split_dirs and not base.is_dir():
        raise DataError(f"{base} does not exist: create it next to {split_dirs[0]}")
    files = _image_files(base)
    if not files:
        raise DataError(f"no images found in {base}: put {_EXPECTS} there")
    # Train and test must agree on label indices and image shape, so both are looked at.
    classes, every_file = _class_names(base, files), list(files)
    for other in split_dirs:
        if other != base:
            other_files = _image_files(other)
            classes |= _class_names(other, other_files)
            every_file += other_files
    labels = _labels(base, files, sorted(classes))
    channels = _common_channels(every_file)
    if not split_dirs:
        keep = _hash_split(base, files, split)
        if not keep:
            raise DataError(
                f"{base} holds one image, which went to train: add more images or make "
                f"{base / 'train'} and {base / 'test'} folders"
            )
        files, labels = [files[i] for i in keep], labels[keep]
    return ImageDataset(_stack(files, channels), labels, name="folder")
