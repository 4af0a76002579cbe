"""Read one image file for a model: pixels as uint8 ``(C, H, W)`` of the model's shape."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from msflow.data.folder import IMAGE_SUFFIXES, image_header, read_image
from msflow.errors import DataError, ShapeError


def load_image(path: str | os.PathLike[str], image_shape: tuple[int, int, int]) -> Tensor:
    """The image at ``path`` as uint8 ``(C, H, W)`` with the ``C`` of ``image_shape``.

    Greyscale is repeated to RGB, and RGB is turned to greyscale with Pillow's ITU-R 601-2 luma
    (``L = 0.299 R + 0.587 G + 0.114 B``). Sizes are never changed silently.

    Raises:
        DataError: no such file, or it is not a readable image (corrupt, truncated, empty, or
            declaring more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels). 16-bit greyscale is scaled
            to 8 bits (``round(v / 257)``); palette, CMYK, 1-bit and alpha images are converted.
        ShapeError: its height and width are not those of ``image_shape``; the message says the size.

    Example:
        >>> import tempfile, pathlib
        >>> tmp = tempfile.TemporaryDirectory()
        >>> p = pathlib.Path(tmp.name) / "x.png"
        >>> Image.new("L", (8, 8), color=7).save(p)
        >>> load_image(p, (3, 8, 8)).shape
        torch.Size([3, 8, 8])
        >>> tmp.cleanup()
    """
    path = Path(path)
    if not path.is_file():
        suffixes = ", ".join(sorted(s.lstrip(".").upper() for s in IMAGE_SUFFIXES))
        raise DataError(f"no image file at {path}: give the path of an image ({suffixes})")
    channels, height, width = image_shape
    # The size comes from the header, so an image of the wrong size (a huge one, say) is
    # refused before its pixels are decoded.
    (w, h), _ = image_header(path)
    if (h, w) != (height, width):
        raise ShapeError(
            f"{path} is {h}x{w} (height x width) but the model takes {height}x{width} images: "
            f"resize or crop the image to {height}x{width}"
        )
    pixels = read_image(path)
    if pixels.shape[2] != channels:
        if channels == 3:
            pixels = pixels.repeat(3, axis=2)
        elif channels == 1:
            pixels = np.array(Image.fromarray(pixels).convert("L"))[:, :, None]
        else:
            raise ShapeError(
                f"cannot give {path} to a model of {channels}-channel images: only greyscale and RGB files can be read"
            )
    return torch.from_numpy(np.array(pixels)).permute(2, 0, 1).contiguous()
