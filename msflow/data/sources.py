"""Image sources for the image-to-image tasks: the bundled photographs, or a folder of photos of any size.

A source is a list of images of any size, each read on demand as ``uint8`` ``(H, W, C)``
(``C`` 1 or 3); a task recipe (:mod:`msflow.data.recipes`) turns crops of them into
(target, condition) pairs. Only file headers are read when a source is opened, so a folder of
any number of photos costs no memory until a crop is drawn from it.

Folder rules (besides those of :mod:`msflow.data.folder`, whose file discovery and split this
shares): images may have any size and may sit in nested folders; PNG, JPEG, WebP, BMP and TIFF
are read; ``root/train`` and ``root/test``, when present, are the splits, otherwise the files
are split 90/10 by the hash of their relative path. Files whose header cannot be read and
images smaller than the crop are skipped with one warning naming them; a split left with no
usable image is an error naming the fix.

Segmentation and inpainting can read one mask per image from a second folder (``masks``):
the mask of ``root/a/b.jpg`` is any image file ``masks/a/b.*`` (same relative path and stem),
of the same size, read as greyscale; nonzero is 1.
"""

from __future__ import annotations

import os
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np

from msflow.data._root import require_root
from msflow.data.folder import IMAGE_SUFFIXES, _hash_split, _image_files, image_header, read_image
from msflow.data.photos import PHOTO_SPLIT, PHOTOGRAPHS, bundled_photos
from msflow.errors import DataError

_EXPECTS = "photos (PNG, JPEG, WebP, BMP or TIFF, any size, nested folders allowed)"


class ImageSource:
    """Images of any size read on demand: ``len(source)``, ``source.read(i)``, ``source.size(i)``.

    Subclasses fill :attr:`names` (one per image, used in messages and to match masks) and
    implement :meth:`_read` and :meth:`size`.
    """

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i``."""
        raise NotImplementedError

    def _read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as ``uint8`` ``(H, W, 3)``: greyscale photos are repeated to RGB."""
        image = self._read(i)
        return image.repeat(3, axis=2) if image.shape[2] == 1 else image

    def read_mask(self, i: int) -> np.ndarray | None:
        """The mask of image ``i`` as ``uint8`` ``(H, W, 1)`` of 0 and 1, or ``None`` without a mask folder."""
        return None

    @property
    def has_masks(self) -> bool:
        """Whether every image comes with a mask (segmentation targets or inpainting holes)."""
        return False


class BundledPhotos(ImageSource):
    """The bundled colour photographs of one split (:data:`~msflow.data.photos.PHOTOGRAPHS`), kept decoded.

    Example:
        >>> src = BundledPhotos("test")
        >>> src.names, src.size(0)
        (['chelsea', 'coffee', 'rocket', 'china'], (300, 451))
    """

    def __init__(self, split: str) -> None:
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} of the bundled photos: use 'train' or 'test'")
        self.names = [n for n in PHOTOGRAPHS if PHOTO_SPLIT[n] == split]

    @cached_property
    def _photos(self) -> list[np.ndarray]:
        # Nine photos of at most 741x500: decoded once per process (each loader worker too).
        photos = bundled_photos(grey=False)
        return [photos[n] for n in self.names]

    def size(self, i: int) -> tuple[int, int]:  # noqa: D102
        h, w, _ = self._photos[i].shape
        return h, w

    def _read(self, i: int) -> np.ndarray:
        return self._photos[i]


class FolderImages(ImageSource):
    """Photos of any size under ``root`` (one split), with optional masks under ``masks``.

    Args:
        root: the folder of photos.
        split: ``"train"`` or ``"test"``.
        min_side: images whose height or width is below this are skipped with a warning.
        masks: optional folder of masks with the photos' relative paths (see the module notes).

    Raises:
        DataError: no images, no usable image left, or a photo without its mask.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> root = pathlib.Path(tmp.name)
        >>> for i, side in enumerate([40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 8]):
        ...     Image.new("RGB", (side, side + 3)).save(root / f"{i}.png")
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     src = FolderImages(root, "train", min_side=32)
        >>> len(src), src.read(0).shape, "smaller than" in str(caught[0].message)
        (9, (43, 40, 3), True)
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str,
        min_side: int = 1,
        masks: str | os.PathLike[str] | None = None,
    ) -> None:
        root_path = require_root(root, "folder", _EXPECTS)
        split_dirs = [root_path / s for s in ("train", "test") if (root_path / s).is_dir()]
        base = root_path / split if split_dirs else root_path
        if split_dirs and not base.is_dir():
            raise DataError(
                f"{base} does not exist: create it next to {split_dirs[0]}, or remove both to split by name"
            )
        files = _image_files(base)
        if not files:
            raise DataError(f"no images found in {base}: put {_EXPECTS} there")
        if not split_dirs:
            files = [files[i] for i in _hash_split(base, files, split)]
            if not files:
                raise DataError(f"{base} holds one image, which went to train: add more images")
        self.base = base
        self.mask_root = None if masks is None else require_root(masks, "masks", "one mask image per photo")
        self.files, self.sizes, skipped = [], [], []
        for path in files:
            try:
                (w, h), _ = image_header(path)
            except DataError as err:
                skipped.append(f"{path.relative_to(base)} (unreadable: {str(err).split(':')[0]})")
                continue
            if min(h, w) < min_side:
                skipped.append(f"{path.relative_to(base)} ({w}x{h}, smaller than the {min_side}x{min_side} crop)")
                continue
            self.files.append(path)
            self.sizes.append((h, w))
        if skipped:
            shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
            warnings.warn(f"{base}: skipped {len(skipped)} of {len(files)} {split} image(s): {shown}", stacklevel=2)
        if not self.files:
            raise DataError(
                f"no usable {split} image in {base}: every file was unreadable or smaller than {min_side}x{min_side}; "
                "add larger photos or lower data.crop"
            )
        self.names = [p.relative_to(base).as_posix() for p in self.files]
        self.mask_files = [self._mask_file(p) for p in self.files] if self.mask_root is not None else None

    def _mask_file(self, photo: Path) -> Path:
        assert self.mask_root is not None
        rel = photo.relative_to(self.base).with_suffix("")
        # The masks folder mirrors the photos' root (or, with split folders, may mirror the split folder).
        for folder in (self.mask_root / rel.parent, self.mask_root / self.base.name / rel.parent):
            found = [p for p in folder.glob(f"{rel.name}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if found:
                return sorted(found)[0]
        raise DataError(f"no mask for {photo} in {self.mask_root}: expected {self.mask_root / rel}.png (same name)")

    def size(self, i: int) -> tuple[int, int]:  # noqa: D102
        return self.sizes[i]

    def _read(self, i: int) -> np.ndarray:
        image = read_image(self.files[i])
        if image.shape[:2] != self.sizes[i]:
            raise DataError(f"{self.files[i]} changed while training: its size is no longer {self.sizes[i]}")
        return image

    @property
    def has_masks(self) -> bool:  # noqa: D102
        return self.mask_files is not None

    def read_mask(self, i: int) -> np.ndarray | None:  # noqa: D102
        if self.mask_files is None:
            return None
        path = self.mask_files[i]
        mask = read_image(path)
        if mask.shape[:2] != self.sizes[i]:
            (h, w), (mh, mw) = self.sizes[i], mask.shape[:2]
            raise DataError(f"mask {path} is {mw}x{mh} but its photo {self.files[i]} is {w}x{h}: give them one size")
        return (mask.max(axis=2, keepdims=True) > 0).astype(np.uint8)
