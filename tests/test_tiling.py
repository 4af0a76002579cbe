"""Tiled inference (msflow/analysis/tiling.py): windows that sum to one, tiled runs equal to whole
runs wherever the model is local, exact output sides, seeded determinism, bounded tiles, and the
block averages of super-resolution kept through the blend."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from msflow import create_model
from msflow.analysis.cond_superres import upscale
from msflow.analysis.superres import bicubic, check_output_size
from msflow.analysis.tiling import plan_tiles, run_tiled, spans, tiled_best_of, tiled_upscale
from msflow.analysis.translate import best_of
from msflow.errors import ConfigError, ShapeError


def image(c: int, h: int, w: int, seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def enlarge(x: Tensor, s: int) -> Tensor:
    return x.repeat_interleave(s, -1).repeat_interleave(s, -2)


@pytest.mark.parametrize("multiple", [1, 4])
@pytest.mark.parametrize("overlap", [0, 3, 8])
@pytest.mark.parametrize("tile", [8, 40, 64])
def test_windows_cover_the_axis_and_sum_to_one(tile: int, overlap: int, multiple: int) -> None:
    if 2 * overlap >= tile:
        with pytest.raises(ConfigError, match="need an overlap in"):
            spans(100, tile, overlap)
        return
    for length in [*range(1, 130), 300, 1000, 4097]:
        tiles = spans(length, tile, overlap, multiple)
        total = torch.zeros(length, dtype=torch.float64)
        for s in tiles:
            assert s.end - s.start == tiles[0].end and s.window.shape == (s.end - s.start,)
            assert bool((s.window >= 0).all() and (s.window <= 1).all())
            total[s.start : s.end] += s.window.double()
        side = tiles[0].end
        assert tiles[0].start == 0 and tiles[-1].end == length and side <= tile
        assert len(tiles) == 1 or (side % multiple == 0 and side > 2 * overlap)
        assert len(tiles) == max(1, -(-(length - overlap) // (tile - overlap)))  # as few tiles as `tile` allows
        assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-6), (length, total)
        for a, b in itertools.pairwise(tiles):
            assert a.end - b.start >= overlap  # neighbours share at least the overlap
            if overlap >= 4:  # a tile's outer overlap // 4 pixels get no weight: its convolutions saw padding there
                assert float(a.window[-(overlap // 4) :].max()) == 0 and float(b.window[: overlap // 4].max()) == 0


@pytest.mark.parametrize(("scale", "h", "w"), [(2, 90, 70), (4, 61, 33), (2, 20, 30)])
def test_tiled_bicubic_is_the_whole_bicubic(scale: int, h: int, w: int) -> None:
    # Pillow's bicubic reads 2 input pixels either side: inside the margins the blend drops, a
    # tile's output equals the whole image's, so the tiled image is the whole one, exactly.
    low = image(3, h, w)
    plan = plan_tiles(h, w, scale, tile=24 * scale, overlap=8 * scale)
    assert plan.output_shape == (h * scale, w * scale) and plan.count > 1 or (h, w) == (20, 30)
    up = run_tiled(lambda c: bicubic(c, scale)[None], low, plan, progress=False)
    assert up.shape == (1, 3, h * scale, w * scale) and up.dtype == torch.uint8
    assert torch.equal(up[0], bicubic(low, scale))


def test_a_pointwise_model_gives_the_whole_image_through_padded_tiles() -> None:
    """Sides that do not divide by the model's multiple: tiles are multiples of it and the last one ends
    at the edge; an axis shorter than a tile is one tile, padded, and its output cropped."""
    seen: list[tuple[int, int]] = []

    def model(c: Tensor) -> Tensor:
        assert c.shape[-2] % 4 == 0 and c.shape[-1] % 4 == 0  # what a flow's squeezes need
        seen.append(tuple(c.shape[-2:]))
        return enlarge(255 - c, 2)[None].expand(3, -1, -1, -1)  # n = 3 identical "samples"

    low = image(1, 45, 38)
    plan = plan_tiles(45, 38, scale=2, tile=40, overlap=8, multiple=4)
    out = run_tiled(model, low, plan, progress=False)
    assert out.shape == (3, 1, 90, 76)
    assert torch.equal(out, enlarge(255 - low, 2)[None].expand(3, -1, -1, -1))
    assert len(seen) == plan.count == 9 and set(seen) == {(20, 16)}  # memory: one tile of at most 20 at a time
    strip = low[:, :7, :]
    out = run_tiled(model, strip, plan_tiles(7, 38, 2, tile=40, overlap=8, multiple=4), progress=False)
    assert torch.equal(out[0], enlarge(255 - strip, 2)) and set(seen[9:]) == {(8, 16)}


def test_blending_keeps_every_block_averaging_to_its_input_pixel() -> None:
    """Windows are constant over each s x s output block, so outputs whose blocks average to the input
    (MRCNF's by construction) still do after the blend, however differently the tiles fill the blocks."""
    low = (image(3, 50, 44) // 2 + 64).to(torch.uint8)  # room for the +-d below within 0..255
    calls = iter(range(1, 100))

    def refine(c: Tensor) -> Tensor:  # a zero-sum detail per 2x2 block, different in every tile
        d = 5 * next(calls) % 23
        pattern = torch.tensor([[d, -d], [-d, d]]).repeat(c.shape[-2], c.shape[-1])
        return (enlarge(c, 2).int() + pattern).to(torch.uint8)[None]

    out = run_tiled(refine, low, plan_tiles(50, 44, 2, tile=32, overlap=12), progress=False)[0]
    blocks = out.int().unfold(1, 2, 2).unfold(2, 2, 2).sum((-1, -2))
    assert torch.equal(blocks, 4 * low.int())


def test_plans_refuse_tiles_that_do_not_fit_in_one_line() -> None:
    with pytest.raises(ConfigError, match="use a tile of at least") as err:
        plan_tiles(100, 100, scale=4, tile=100, overlap=49, multiple=4)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="tile sides are multiples of 16"):
        plan_tiles(100, 100, scale=2, tile=8, overlap=0, multiple=8)


def tiny_sr() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cflow-sr2", steps=1, hidden=8, features=8, blocks=1, growth=4).eval()


def test_tiled_flow_samples_have_exact_sides_and_repeat_with_the_seed() -> None:
    model = tiny_sr()
    low = image(3, 37, 29)
    runs = [
        tiled_upscale(model, low, 2, 0.8, torch.Generator().manual_seed(seed), tile=32, overlap=8, progress=False)
        for seed in (3, 3, 4)
    ]
    (a, count), (b, _), (c, _) = runs
    assert a.shape == (2, 3, 74, 58) and a.dtype == torch.uint8 and count == 9
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one tile is the whole-image run, bit for bit
    whole, count = tiled_upscale(model, low, 1, 0.0, tile=128, overlap=8, progress=False)
    assert count == 1 and torch.equal(whole, upscale(model, low, 1, 0.0))
    # a flow is not local (its conditioner sees far), so tiles change the image, but only a little at T = 0
    tiled, _ = tiled_upscale(model, low, 1, 0.0, tile=48, overlap=16, progress=False)
    assert (tiled.float() - whole.float()).abs().mean() < 8


def test_an_untrained_flow_at_t0_tiles_to_the_exact_bicubic() -> None:
    """cflow-sr2 models HR relative to Pillow's bicubic upsampling of its input, and untrained it adds
    nothing at T = 0: tile by tile (tiles of even sides need no padding), the bicubic image exactly."""
    low = image(3, 37, 29)
    tiled, count = tiled_upscale(tiny_sr(), low, 1, 0.0, tile=32, overlap=8, progress=False)
    assert count == 9 and torch.equal(tiled[0], bicubic(low, 2))


def test_tiled_best_of_ranks_each_tile_and_is_the_whole_best_of_in_one_tile() -> None:
    torch.manual_seed(0)
    model = create_model(
        "caflow-colorize", size=16, levels=2, hidden=8, cond_hidden=8, cond_steps=1, target_steps=1, flow_steps=1
    ).eval()
    grey = image(1, 30, 21)
    best_of(model, grey[None], 1, 1, 0.85)  # a fresh model initialises its ActNorms from its first batch
    samples, bpd, count = tiled_best_of(
        model, grey, 2, 3, 0.85, torch.Generator().manual_seed(1), tile=16, overlap=4, progress=False
    )
    assert samples.shape == (2, 3, 30, 21) and count == 6 and bpd.shape == (2,) and bpd[0] <= bpd[1]
    again = tiled_best_of(model, grey, 2, 3, 0.85, torch.Generator().manual_seed(1), tile=16, overlap=4, progress=False)
    assert torch.equal(samples, again[0]) and torch.equal(bpd, again[1])
    one, one_bpd, count = tiled_best_of(model, grey, 2, 3, 0.85, torch.Generator().manual_seed(1), progress=False)
    whole, whole_bpd = best_of(model, grey[None], 2, 3, 0.85, torch.Generator().manual_seed(1))
    assert count == 1 and torch.equal(one, whole) and torch.equal(one_bpd, whole_bpd)


def test_results_too_large_to_hold_are_refused_in_one_line_naming_the_fix() -> None:
    check_output_size(3000, 3000, 2)  # 36 MP: tiles keep the model's memory bounded
    with pytest.raises(ShapeError, match="lower -n or crop the image") as err:
        check_output_size(3000, 3000, 2, n=4)
    assert len(str(err.value).splitlines()) == 1 and "4 outputs of 6000x6000" in str(err.value)
    with pytest.raises(
        ShapeError, match=r"gives a 24000x24000 output, 576,000,000 pixels, more than .*; crop the image$"
    ):
        check_output_size(12000, 12000, 2)
