"""Image grids and plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from torch import Tensor

from msflow._io import atomic_write
from msflow._optional import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 images ``(N, C, H, W)`` into one ``(H', W', C)`` array, ``nrow`` per row.

    Example:
        >>> import torch
        >>> image_grid(torch.zeros(6, 1, 4, 4, dtype=torch.uint8), nrow=3).shape
        (14, 20, 1)
    """
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.detach().cpu().numpy().transpose(0, 2, 3, 1)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = arr[i]
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write an image grid PNG (grey or RGB), enlarged ``scale`` times with nearest neighbours."""
    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def save_image(image: Tensor, path: str | Path) -> Path:
    """Write one uint8 image ``(C, H, W)`` (grey or RGB) as a PNG at its own size, no border.

    Example:
        >>> import torch, tempfile, pathlib
        >>> out = save_image(torch.zeros(1, 4, 6, dtype=torch.uint8), pathlib.Path(tempfile.mkdtemp()) / "a.png")
        >>> Image.open(out).size
        (6, 4)
    """
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    img = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    path = Path(path)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def figure(purpose: str, **kwargs: Any) -> Figure:
    """A matplotlib ``Figure(**kwargs)`` drawn by the Agg canvas, with no pyplot (global) state.

    matplotlib is in the ``data`` extra: without it this raises a one-line
    :class:`~msflow.errors.MissingDependencyError` that starts with ``purpose``.

    Example:
        >>> fig = figure("a test plot", figsize=(2, 2))
        >>> type(fig.canvas).__name__
        'FigureCanvasAgg'
    """
    fig = require("matplotlib.figure", "data", purpose).Figure(**kwargs)
    require("matplotlib.backends.backend_agg", "data", purpose).FigureCanvasAgg(fig)
    return fig
