r"""Tiled inference: run a fully convolutional image-to-image model over an input of any size in
overlapping tiles, so memory is bounded by the tile, not by the photo.

The input ``x`` (``C x h x w``, the condition: a low-resolution image, a grey image, ...) is cut
into tiles of at most ``t`` input pixels a side that overlap by at least ``o`` (``o < t / 2``),
spread evenly along each axis, their sides multiples of what the model's squeezes take (an input
shorter than a tile is one tile, padded at the right and bottom and its output cropped back).
Each tile goes through the model on its own and gives ``s`` times larger outputs ``y_k``, which
are blended with windows that sum to one:

.. math::

    y(p) = \sum_k w_k(p)\, y_k(p), \qquad w_k(p) = u_k(p_0)\, v_k(p_1),
    \qquad \sum_k w_k(p) = 1,

where ``u_k`` and ``v_k`` are the tile's windows along rows and columns. Along an axis, two
neighbouring tiles ``[a_i, b_i)`` and ``[a_{i+1}, b_{i+1})`` hand over in a transition of
``L = max(1, o // 2)`` input pixels centred on their overlap, ``c_i = (a_{i+1} + b_i) / 2``: at the
pixel centred at ``x``, with ``r = \mathrm{clip}((x - c_i + L/2) / L, 0, 1)``, tile ``i+1`` weighs
``\sin^2(\pi r / 2)`` and tile ``i`` weighs ``\cos^2(\pi r / 2)``. So no pixel has a seam (the
weights are smooth) and the outer quarter of every overlap, where a tile's convolutions saw
padding instead of its neighbour's pixels, has weight 0. Windows are built at input resolution
and repeated ``s x s``: every output block that refines one input pixel is blended with one
weight, so a blend of outputs whose blocks reduce to the input still reduces to it. Where one
tile covers the input, the result is the whole-image run exactly.

Tiles run one at a time in a fixed order, with the caller's generator: the same seed gives the
same image. Finished output rows are written as uint8 as soon as no later tile reaches them,
so besides the result only one row of tiles is held in float32.

Example:
    >>> import torch
    >>> from msflow.analysis.superres import bicubic
    >>> low = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    >>> plan = plan_tiles(90, 70, scale=2, tile=64, overlap=16)
    >>> plan.count, plan.output_shape
    (12, (180, 140))
    >>> up = run_tiled(lambda c: bicubic(c, 2)[None], low, plan, progress=False)
    >>> torch.equal(up[0], bicubic(low, 2))  # bicubic reaches 2 input pixels: inside the margins
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from msflow.analysis.cond_superres import input_multiple, pad_to_multiple, upscale
from msflow.analysis.ranking import best_of
from msflow.errors import ConfigError, ShapeError

DEFAULT_TILE = 1024
"""Output pixels per tile side: inputs whose output is larger on a side go through tiles."""

DEFAULT_OVERLAP = 64
"""Output pixels two neighbouring tiles share at least (the middle half is the blend)."""

TileFn = Callable[[Tensor], Tensor]
"""One tile ``(C, h, w)`` uint8 (sides divisible by the plan's multiple) -> ``(n, C', s h, s w)`` uint8
(larger outputs are cropped at the right and bottom)."""


@dataclass(frozen=True)
class Span:
    """One tile's extent ``[start, end)`` along an axis, in input pixels, and its window there."""

    start: int
    end: int
    window: Tensor


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of an ``h x w`` input lie (:func:`plan_tiles`)."""

    rows: tuple[Span, ...]
    cols: tuple[Span, ...]
    scale: int
    multiple: int

    @property
    def count(self) -> int:
        """How many tiles the model runs on."""
        return len(self.rows) * len(self.cols)

    @property
    def output_shape(self) -> tuple[int, int]:
        """``(s h, s w)``: the output's sides, exactly ``scale`` times the input's."""
        return self.rows[-1].end * self.scale, self.cols[-1].end * self.scale


def spans(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[Span, ...]:
    """Tiles of at most ``tile`` pixels along an axis of ``length`` (one tile of ``length`` if it fits),
    spread evenly so that neighbours share at least ``overlap`` pixels, with windows summing to 1.

    The tiles are as few as ``tile`` allows, and as small as covers the axis with that many (a
    multiple of ``multiple``, and above ``2 * overlap``): 1000 pixels in tiles of at most 512 with
    32 of overlap are 3 tiles of 356, not 3 of 512.

    Example:
        >>> [(s.start, s.end) for s in spans(100, 40, 8)]
        [(0, 39), (30, 69), (61, 100)]
        >>> [(s.start, s.end) for s in spans(1000, 512, 32, multiple=4)]
        [(0, 356), (322, 678), (644, 1000)]
        >>> total = torch.zeros(100)
        >>> for s in spans(100, 40, 8):
        ...     total[s.start : s.end] += s.window
        >>> bool(torch.allclose(total, torch.ones(100)))
        True
    """
    if not 0 <= 2 * overlap < tile:
        raise ConfigError(f"tiles of {tile} pixels need an overlap in [0, {(tile - 1) // 2}], got {overlap}")
    if length <= tile:
        return (Span(0, length, torch.ones(length)),)
    count = math.ceil((length - overlap) / (tile - overlap))
    # Shrinking the tiles to what covers the axis with `count` of them saves compute; they stay
    # above twice the overlap, which keeps each transition inside its overlap and apart from the next.
    cover = max(math.ceil((length + (count - 1) * overlap) / count), 2 * overlap + 1)
    tile = min(tile, -(-cover // multiple) * multiple)
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    bounds = [(a, a + tile) for a in starts]
    ramp = max(1, overlap // 2)
    # transition i, between tiles i and i + 1, is centred on their overlap
    centres = [(bounds[i + 1][0] + bounds[i][1]) / 2 for i in range(count - 1)]
    out = []
    for i, (a, b) in enumerate(bounds):
        x = torch.arange(a, b, dtype=torch.float64) + 0.5
        window = torch.ones(b - a, dtype=torch.float64)
        if i > 0:
            window *= _rise(x, centres[i - 1], ramp)
        if i < count - 1:
            window *= 1 - _rise(x, centres[i], ramp)
        out.append(Span(a, b, window.float()))
    return tuple(out)


def _rise(x: Tensor, centre: float, width: int) -> Tensor:
    """``sin^2(pi r / 2)`` with ``r`` going 0 -> 1 across ``[centre - width/2, centre + width/2]``."""
    r = ((x - centre + width / 2) / width).clamp(0, 1)
    return torch.sin(r * (math.pi / 2)) ** 2


def plan_tiles(
    h: int, w: int, scale: int = 1, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, multiple: int = 1
) -> TilePlan:
    """The tiles an ``h x w`` input goes through, for a model that enlarges ``scale`` times and
    takes sides divisible by ``multiple`` (:func:`~msflow.analysis.cond_superres.input_multiple`).

    ``tile`` and ``overlap`` count output pixels; the input tile is at most ``tile / scale``
    rounded down to the multiple (so tiles need no padding; :func:`spans` shrinks them to what
    covers the input), the input overlap ``overlap / scale`` rounded up.

    Raises:
        ConfigError: a tile smaller than the model's multiple, or an overlap of half a tile or more.
    """
    if h < 1 or w < 1:
        raise ShapeError(f"cannot tile an empty {h}x{w} input")
    side = tile // scale // multiple * multiple
    lap = -(-overlap // scale)
    if side < max(multiple, 1) or not 0 <= 2 * lap < side:
        unit = multiple * scale
        raise ConfigError(
            f"tiles of {tile} output pixels with {overlap} of overlap do not fit this x{scale} model "
            f"(tile sides are multiples of {unit}): use a tile of at least {(2 * lap // multiple + 1) * unit} "
            f"pixels and an overlap below half of it"
        )
    return TilePlan(spans(h, side, lap, multiple), spans(w, side, lap, multiple), scale, multiple)


@torch.no_grad()
def run_tiled(fn: TileFn, cond: Tensor, plan: TilePlan, progress: bool = True) -> Tensor:
    """Run ``fn`` over the tiles of ``cond`` ``(C, h, w)`` uint8 and blend its outputs (module docstring).

    Args:
        fn: the model on one tile: ``(C, h', w')`` -> ``(n, C', s h', s w')`` uint8 (see :data:`TileFn`).
        cond: the whole input, uint8, on any device (tiles are cut from it, the output is on the CPU).
        plan: :func:`plan_tiles` of ``cond``'s sides.
        progress: show a progress bar when there is more than one tile.

    Returns:
        ``(n, C', s h, s w)`` uint8 on the CPU.
    """
    h, w = cond.shape[-2:]
    if (plan.rows[-1].end, plan.cols[-1].end) != (h, w):
        raise ShapeError(f"a plan for {plan.rows[-1].end}x{plan.cols[-1].end} inputs cannot tile a {h}x{w} one")
    s = plan.scale
    out: Tensor | None = None
    acc: Tensor | None = None  # the float rows of the current row of tiles, [top, bottom) in input pixels
    top = 0
    with tqdm(total=plan.count, desc="tiles", unit="tile", leave=False, disable=not progress or plan.count == 1) as bar:
        for i, row in enumerate(plan.rows):
            for col in plan.cols:
                piece = pad_to_multiple(cond[None, :, row.start : row.end, col.start : col.end], plan.multiple)[0]
                got = fn(piece)[..., : (row.end - row.start) * s, : (col.end - col.start) * s].cpu()
                if out is None:
                    out = torch.empty((*got.shape[:2], h * s, w * s), dtype=torch.uint8)
                if acc is None:
                    acc = torch.zeros((*got.shape[:2], (row.end - row.start) * s, w * s))
                weight = torch.outer(row.window, col.window).repeat_interleave(s, 0).repeat_interleave(s, 1)
                acc[..., col.start * s : col.end * s] += got.float() * weight
                bar.update()
            assert out is not None and acc is not None
            # rows above the next row of tiles get nothing more: round them into the result
            nxt = plan.rows[i + 1] if i + 1 < len(plan.rows) else None
            done = (nxt.start if nxt is not None else row.end) - top
            out[..., top * s : (top + done) * s, :] = acc[..., : done * s, :].round_().clamp_(0, 255).to(torch.uint8)
            if nxt is not None:
                carried = acc[..., done * s :, :]
                acc = torch.zeros((*out.shape[:2], (nxt.end - nxt.start) * s, w * s))
                acc[..., : carried.shape[-2], :] = carried
                top = nxt.start
    assert out is not None
    return out


def model_plan(model: nn.Module, h: int, w: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> TilePlan:
    """:func:`plan_tiles` for a conditional model's ``h x w`` condition (its ``scale`` and input multiple)."""
    return plan_tiles(h, w, model.scale, tile, overlap, input_multiple(model))


def tiled_upscale(
    model: nn.Module,
    cond: Tensor,
    n: int,
    temperature: float,
    generator: torch.Generator | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = True,
) -> tuple[Tensor, int]:
    """``n`` samples ``(n, C, s h, s w)`` of ``p(target | cond)`` for one uint8 condition ``(Cc, h, w)``,
    tile by tile (:func:`~msflow.analysis.cond_superres.upscale` on each), and the number of tiles.

    Example:
        >>> import torch, msflow
        >>> model = msflow.create_model("cflow-sr2", steps=1, hidden=8, features=8, blocks=1, growth=4).eval()
        >>> low = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
        >>> up, count = tiled_upscale(model, low, 2, 0.5, torch.Generator().manual_seed(0), tile=48, overlap=8)
        >>> up.shape, count
        (torch.Size([2, 3, 80, 60]), 4)
    """
    plan = model_plan(model, *cond.shape[-2:], tile, overlap)
    return run_tiled(lambda c: upscale(model, c, n, temperature, generator), cond, plan, progress), plan.count


def tiled_best_of(
    model: nn.Module,
    cond: Tensor,
    n: int,
    m: int,
    temperature: float,
    generator: torch.Generator | None = None,
    score_seed: int = 0,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = True,
) -> tuple[Tensor, Tensor, int]:
    """:func:`~msflow.analysis.ranking.best_of` tile by tile: ``(samples (n, C, s h, s w), bits/dim (n,),
    the number of tiles)`` for one uint8 condition ``(Cc, h, w)`` of a CAFLOW model.

    Each tile keeps its own ``n`` best of ``m`` (a tile's candidates are ranked on that tile), so
    sample ``k`` is the blend of every tile's ``k``-th best, and its bits/dim is the mean of
    theirs weighted by tile area. With one tile this is ``best_of`` on the whole input.
    """
    plan = model_plan(model, *cond.shape[-2:], tile, overlap)
    scores: list[tuple[Tensor, int]] = []

    def one_tile(piece: Tensor) -> Tensor:
        samples, bpd = best_of(model, piece[None], n, m, temperature, generator, score_seed)
        scores.append((bpd, piece.shape[-2] * piece.shape[-1]))
        return samples

    samples = run_tiled(one_tile, cond, plan, progress)
    area = sum(a for _, a in scores)
    return samples, sum(b * (a / area) for b, a in scores), plan.count


__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "Span",
    "TileFn",
    "TilePlan",
    "model_plan",
    "plan_tiles",
    "run_tiled",
    "spans",
    "tiled_best_of",
    "tiled_upscale",
]
