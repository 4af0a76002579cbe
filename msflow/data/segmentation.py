"""``shapes-seg``: a bundled vessel-segmentation task on real textures, with exact binary masks.

DRIVE (paper 003, section 5.2) cannot ship with msflow, so this set stands in for it in tests,
examples and quick experiments. Each pair is a 64x64 RGB condition image and the 0/1 mask of
the thin curvilinear structures drawn into it:

- Background: a random 64x64 crop (randomly flipped and transposed) of a bundled photo of the
  split (:data:`~msflow.data.photos.PHOTO_SPLIT`): the colour photos, and the greyscale ones
  (brick, grass, gravel, ...) repeated to RGB. ``retina`` and ``microaneurysms`` are left out:
  they hold real vessels that no mask would mark.
- Mask: one to three "vessels" (smooth random walks of the direction, 2-4 px wide) passing
  through the crop, each with up to two thinner branches, up to two 1 px capillaries, and in
  one image of four a filled ellipse ("lesion"). Drawn with Pillow's ``ImageDraw``.
- Composite: the mask is blurred with a 3x3 binomial kernel, and inside it the background is
  pulled towards a vessel colour by a random contrast ``s`` in [0.35, 0.8]. Each image has a
  dark reddish tone (as in fundus photos) and a light one; each pixel takes the tone farther
  from the mean brightness of its 9x9 neighbourhood, so vessels stay visible on dark and
  bright regions alike. Gaussian noise of standard deviation 2-6 covers the whole image. The
  texture shows through the vessels, their polarity and contrast vary, so no global threshold
  solves the task, but a small convolutional model learns it.

Foreground fraction: 8.7% of all pixels for both splits with the default seed; 90% of the
images lie between 2.5% and 16% (extremes 0.7% and 29%). Generation is seeded, vectorised with
numpy apart from one Pillow drawing call per curve, and takes about 1.2 s for the 2000 train
images on one core.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from msflow.data.pairs import PairedDataset
from msflow.data.photos import PHOTO_SPLIT, bundled_photos
from msflow.errors import DataError

DEFAULT_SIZES = {"train": 2000, "test": 200}

# Real retinal vessels without labels would teach the model to ignore vessels.
_UNLABELLED_VESSELS = frozenset({"retina", "microaneurysms"})

# Per image: up to 3 vessels, 2 branches per vessel, 2 capillaries (inactive slots are skipped).
_VESSELS, _BRANCHES, _CAPILLARIES = 3, 2, 2
_STEPS = 48  # vertices per walk; a walk is cut to its own random length


def _background_pool(split: str) -> list[np.ndarray]:
    colour, grey = bundled_photos(grey=False), bundled_photos(grey=True)
    return [
        colour[name] if name in colour else np.repeat(grey[name], 3, axis=2)
        for name, side in PHOTO_SPLIT.items()
        if side == split and name not in _UNLABELLED_VESSELS
    ]


def _backgrounds(rng: np.random.Generator, pool: list[np.ndarray], n: int, size: int) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 crops; photos are drawn uniformly, so small textures count as much as big photos."""
    which = rng.integers(len(pool), size=n)
    corners = rng.random((n, 2))
    crops = np.empty((n, size, size, 3), np.uint8)
    for i, (k, (u, v)) in enumerate(zip(which, corners, strict=True)):
        h, w = pool[k].shape[:2]
        top, left = int(u * (h - size + 1)), int(v * (w - size + 1))
        crops[i] = pool[k][top : top + size, left : left + size]
    flips = rng.random((3, n)) < 0.5
    crops[flips[0]] = crops[flips[0], ::-1]
    crops[flips[1]] = crops[flips[1], :, ::-1]
    crops[flips[2]] = crops[flips[2]].transpose(0, 2, 1, 3)
    return crops


def _walks(
    rng: np.random.Generator, starts: np.ndarray, angles: np.ndarray, step: float
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random curves: the heading drifts by a per-curve bend plus Gaussian turns.

    Returns vertices ``(..., _STEPS + 1, 2)`` starting at ``starts`` and headings ``(..., _STEPS + 1)``.
    """
    shape = angles.shape
    bend = rng.uniform(-0.06, 0.06, shape)[..., None]
    turns = rng.normal(0.0, 0.12, (*shape, _STEPS)) + bend
    heading = angles[..., None] + np.concatenate([np.zeros((*shape, 1)), np.cumsum(turns, axis=-1)], axis=-1)
    moves = step * np.stack([np.cos(heading[..., :-1]), np.sin(heading[..., :-1])], axis=-1)
    path = np.concatenate([np.zeros((*shape, 1, 2)), np.cumsum(moves, axis=-2)], axis=-2)
    return starts[..., None, :] + path, heading


def _geometry(rng: np.random.Generator, n: int, size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Curves as ``(vertices, lengths, widths)`` groups; a length of 0 marks an unused slot."""
    step = 2.0 * size / 64
    # Vessels: a walk shifted so that a random vertex lies at a random point of the crop, so
    # the vessel passes through the image rather than starting at its edge.
    walk, heading = _walks(rng, np.zeros((n, _VESSELS, 2)), rng.uniform(0, 2 * np.pi, (n, _VESSELS)), step)
    count = rng.integers(1, _VESSELS + 1, n)
    used = np.arange(_VESSELS) < count[:, None]
    v_len = np.where(used, rng.integers(_STEPS // 2, _STEPS + 1, (n, _VESSELS)), 0)
    anchor = (rng.uniform(0.25, 0.75, v_len.shape) * v_len).astype(np.int64)
    at = np.take_along_axis(walk, anchor[..., None, None], axis=2)
    vessels = walk - at + rng.uniform(0, size, (n, _VESSELS, 1, 2))
    v_width = rng.integers(2, 5, (n, _VESSELS))

    # Branches leave a vessel at a random vertex, turned 0.5-1.2 rad to either side; thinner.
    fork = rng.integers(0, _STEPS // 2, (n, _VESSELS, _BRANCHES))
    base = np.take_along_axis(vessels[:, :, None], fork[..., None, None], axis=3)[..., 0, :]
    side = rng.choice([-1.0, 1.0], (n, _VESSELS, _BRANCHES))
    angle = np.take_along_axis(heading, fork, axis=2) + side * rng.uniform(0.5, 1.2, side.shape)
    branches, _ = _walks(rng, base, angle, step)
    b_used = (rng.random(fork.shape) < 0.6) & used[..., None]
    b_len = np.where(b_used, rng.integers(_STEPS // 6, _STEPS // 2, fork.shape), 0)
    b_width = rng.integers(1, v_width[..., None], fork.shape)

    capillaries, _ = _walks(
        rng, rng.uniform(0, size, (n, _CAPILLARIES, 2)), rng.uniform(0, 2 * np.pi, (n, _CAPILLARIES)), step
    )
    c_len = np.where(rng.random((n, _CAPILLARIES)) < 0.5, rng.integers(_STEPS // 6, _STEPS // 2, (n, _CAPILLARIES)), 0)
    flat = (n, _VESSELS * _BRANCHES)
    return [
        (vessels, v_len, v_width),
        (branches.reshape(*flat, _STEPS + 1, 2), b_len.reshape(flat), b_width.reshape(flat)),
        (capillaries, c_len, np.ones((n, _CAPILLARIES), np.int64)),
    ]


def _blobs(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotated ellipses as 24-gons ``(n, 24, 2)``, and which images get one (one in four)."""
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = rng.uniform(0.05, 0.13, (n, 2, 1)) * size
    turn = rng.uniform(0, np.pi, (n, 1))
    x, y = radii[:, 0] * np.cos(t), radii[:, 1] * np.sin(t)
    corners = np.stack([x * np.cos(turn) - y * np.sin(turn), x * np.sin(turn) + y * np.cos(turn)], axis=-1)
    return corners + rng.uniform(0.15, 0.85, (n, 1, 2)) * size, rng.random(n) < 0.25


def _draw_masks(
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], blobs: tuple[np.ndarray, np.ndarray], size: int
) -> np.ndarray:
    polygons, has_blob = blobs
    masks = np.empty((len(has_blob), size, size), np.uint8)
    for i in range(len(has_blob)):
        canvas = Image.new("L", (size, size))
        pen = ImageDraw.Draw(canvas)
        for vertices, lengths, widths in groups:
            for path, length, width in zip(vertices[i], lengths[i], widths[i], strict=True):
                if length:
                    pen.line(path[: length + 1].ravel().tolist(), fill=1, width=int(width), joint="curve")
        if has_blob[i]:
            pen.polygon(polygons[i].ravel().tolist(), fill=1)
        masks[i] = np.asarray(canvas)
    return masks


def _blur(masks: np.ndarray) -> np.ndarray:
    """Separable 3x3 binomial blur ``[1, 2, 1] / 4`` of ``(n, H, W)`` masks, edges replicated."""
    out = np.pad(masks.astype(np.float32), ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = 0.25 * out[:, :-2] + 0.5 * out[:, 1:-1] + 0.25 * out[:, 2:]
    return 0.25 * out[:, :, :-2] + 0.5 * out[:, :, 1:-1] + 0.25 * out[:, :, 2:]


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean of ``(n, H, W)`` over ``(2 radius + 1)^2`` windows (edges replicated), from cumulative sums."""
    k = 2 * radius + 1
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float32)
        x = (np.take(c, range(k, c.shape[axis]), axis=axis) - np.take(c, range(c.shape[axis] - k), axis=axis)) / k
    return x


def _composite(rng: np.random.Generator, background: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pull the ``(n, H, W, 3)`` backgrounds towards a vessel colour inside the blurred masks, add noise."""
    n = len(masks)
    image = background.astype(np.float32)
    luma = image @ np.array([0.299, 0.587, 0.114], np.float32)
    dark = rng.uniform(0, 50, (n, 3)) + np.array([40.0, 0, 0]) * rng.random((n, 1))
    light = rng.uniform(185, 255, (n, 3))
    # Per pixel, the tone farther from the surrounding (9x9) brightness: the vessel stays visible
    # where it crosses from a bright to a dark region, e.g. off a coin onto the table.
    near = _box_mean(luma, 4)[..., None]
    dark_luma, light_luma = (c @ np.array([0.299, 0.587, 0.114]) for c in (dark, light))
    use_dark = near - dark_luma[:, None, None, None] >= light_luma[:, None, None, None] - near
    colour = np.where(use_dark, dark[:, None, None].astype(np.float32), light[:, None, None].astype(np.float32))
    weight = _blur(masks)[..., None] * rng.uniform(0.35, 0.8, (n, 1, 1, 1)).astype(np.float32)
    image += weight * (colour - image)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    image += noise * rng.uniform(2, 6, (n, 1, 1, 1)).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)


def load_shape_segmentation(split: str, n: int | None = None, size: int = 64, seed: int = 0) -> PairedDataset:
    """Synthetic vessel masks drawn into real photo crops (see the module docstring).

    Args:
        split: ``"train"`` or ``"test"``: backgrounds come only from that split's photos.
        n: number of pairs; 2000 for train and 200 for test by default.
        size: side of the square images.
        seed: the same ``(split, n, size, seed)`` always gives the same pairs. The split is mixed
            into the seed, so train and test never share masks.

    Returns:
        A :class:`~msflow.data.pairs.PairedDataset` with ``task="segment"``, ``n_bits=1``,
        targets ``(n, 1, size, size)`` of 0 and 1, conditions ``(n, 3, size, size)``.

    Example:
        >>> ds = load_shape_segmentation("test", n=4)
        >>> ds, ds.n_bits, ds.images.unique().tolist()
        (PairedDataset(name='shapes-seg', task='segment', n=4, target=1x64x64, cond=3x64x64), 1, [0, 1])
    """
    if split not in DEFAULT_SIZES:
        raise DataError(f"unknown split {split!r} for dataset 'shapes-seg': use 'train' or 'test'")
    n = DEFAULT_SIZES[split] if n is None else n
    if n < 1:
        raise DataError(f"shapes-seg needs n >= 1 images, got {n}")
    pool = _background_pool(split)
    smallest = min(min(p.shape[:2]) for p in pool)
    if not 16 <= size <= smallest:
        raise DataError(
            f"shapes-seg images are cut from photos as small as {smallest} px: choose 16 <= size <= {smallest}"
        )
    rng = np.random.default_rng([seed, list(DEFAULT_SIZES).index(split)])
    background = _backgrounds(rng, pool, n, size)
    masks = _draw_masks(_geometry(rng, n, size), _blobs(rng, n, size), size)
    # Chunks keep the float images in cache: about twice as fast as one pass over all of them.
    chunks = range(0, n, 256)
    images = np.concatenate([_composite(rng, background[i : i + 256], masks[i : i + 256]) for i in chunks])
    targets, conds = torch.from_numpy(masks[:, None].copy()), torch.from_numpy(np.ascontiguousarray(images))
    return PairedDataset(targets, conds, task="segment", name="shapes-seg", n_bits=1)
