"""Tests of the bundled image-to-image pairs: colorization, inpainting and sketch-to-image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.feature import canny

from msflow.data import PairedDataset, get_dataset, list_datasets
from msflow.data.pairs import load_sr_pairs, photo_crops, strided_crops
from msflow.data.photos import PHOTO_SPLIT, PHOTOGRAPHS, bundled_photos
from msflow.data.registry import PAIRED_DATASETS
from msflow.data.translation import (
    SKETCH_SIGMA,
    apply_mask,
    central_mask,
    load_colorize_pairs,
    load_inpaint_pairs,
    load_sketch_pairs,
    sketch_edges,
    to_grey,
)
from msflow.errors import DataError, ShapeError
from msflow.train.compatibility import check_compatible

NAMES = {"colorize": "photos-colorize", "inpaint": "photos-inpaint", "sketch": "photos-sketch"}
LOADERS = {"colorize": load_colorize_pairs, "inpaint": load_inpaint_pairs, "sketch": load_sketch_pairs}
COND_CHANNELS = {"colorize": 1, "inpaint": 3, "sketch": 1}
SIZES = {"train": 5752, "test": 862}


@pytest.fixture(scope="module")
def pairs() -> dict[tuple[str, str], PairedDataset]:
    return {(task, split): load(split) for task, load in LOADERS.items() for split in SIZES}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return bundled_photos(grey=False)


def pillow_grey(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(H, W)`` through Pillow's mode-L conversion."""
    return np.asarray(Image.fromarray(rgb).convert("L"))


# ---------------------------------------------------------------- photo crops


def test_photo_crops_follow_the_split_and_strides(photos):
    for split, stride in (("train", 16), ("test", 32)):
        expected = [strided_crops(photos[n], 32, stride) for n in PHOTOGRAPHS if PHOTO_SPLIT[n] == split]
        crops = photo_crops(split, 32)
        assert crops.dtype == torch.uint8 and crops.shape == (SIZES[split], 3, 32, 32)
        assert np.array_equal(crops.numpy(), np.concatenate(expected))
    assert photo_crops("test", 16).shape == (3509, 3, 16, 16)
    with pytest.raises(DataError, match="unknown split 'val'"):
        photo_crops("val", 32)


def test_sr_pairs_still_use_the_same_crops():
    sr = load_sr_pairs("test", 4)
    assert torch.equal(sr.images, photo_crops("test", 32)) and sr.cond_shape == (3, 8, 8)


# ---------------------------------------------------------------- the loaders


@pytest.mark.parametrize("split", list(SIZES))
@pytest.mark.parametrize("task", list(LOADERS))
def test_loader_sizes_shapes_and_targets(pairs, task, split):
    ds = pairs[task, split]
    assert isinstance(ds, PairedDataset) and len(ds) == SIZES[split]
    assert (ds.name, ds.task, ds.n_bits, ds.scale) == (NAMES[task], task, 8, 1)
    assert ds.image_shape == (3, 32, 32) and ds.cond_shape == (COND_CHANNELS[task], 32, 32)
    assert ds.images.dtype == ds.conds.dtype == torch.uint8 and ds.labels.eq(-1).all()
    # Every task's targets are the same photo crops, so the tasks are comparable.
    assert torch.equal(ds.images, pairs["colorize", split].images)
    target, cond = ds[7]
    assert torch.equal(target, ds.images[7]) and torch.equal(cond, ds.conds[7])


def test_loader_sizes_follow_the_crop_size():
    ds = load_inpaint_pairs("test", size=16)
    assert len(ds) == 3509 and ds.image_shape == ds.cond_shape == (3, 16, 16)
    assert torch.equal(ds.conds[:, :, 4:12, 4:12], torch.zeros(3509, 3, 8, 8, dtype=torch.uint8))


def test_train_and_test_come_from_different_photos(pairs):
    train, test = pairs["colorize", "train"].images, pairs["colorize", "test"].images
    train_crops = {bytes(c) for c in train.reshape(len(train), -1).numpy()}
    assert not any(bytes(c) in train_crops for c in test.reshape(len(test), -1).numpy())


# ---------------------------------------------------------------- colorization


@pytest.mark.parametrize("shape", [(4, 3, 17, 9), (1, 3, 64, 64)])
def test_to_grey_equals_pillow_mode_l(shape):
    rgb = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = to_grey(rgb)
    assert grey.dtype == torch.uint8 and grey.shape == (shape[0], 1, *shape[2:])
    for image, luma in zip(rgb, grey, strict=True):
        assert np.array_equal(luma[0].numpy(), pillow_grey(image.permute(1, 2, 0).numpy()))
    extremes = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1)
    assert to_grey(extremes.contiguous()).flatten().tolist() == [0, 255]


def test_to_grey_refuses_other_inputs():
    with pytest.raises(ShapeError, match=r"to_grey takes images \(N, 3, H, W\), got \(2, 1, 4, 4\)"):
        to_grey(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="uint8"):
        to_grey(torch.zeros(2, 3, 4, 4))


def test_colorize_conditions_are_pillow_grey_of_the_photos(pairs, photos):
    ds = pairs["colorize", "test"]
    assert torch.equal(ds.conds, to_grey(ds.images))
    first = next(n for n in PHOTOGRAPHS if PHOTO_SPLIT[n] == "test")
    grey = pillow_grey(photos[first])
    assert np.array_equal(ds.conds[1, 0].numpy(), grey[:32, 32:64])  # the second crop of the first test photo


# ---------------------------------------------------------------- inpainting


def test_central_mask_covers_the_central_quarter():
    mask = central_mask(32, 32)
    assert mask.dtype == torch.bool and mask.shape == (32, 32)
    assert mask.sum() == 32 * 32 // 4 and mask[8:24, 8:24].all()
    assert torch.equal(mask, mask.flip(0)) and torch.equal(mask, mask.flip(1))  # centred
    rows, cols = mask.nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 23, 8, 23)
    odd = central_mask(6, 10)  # h//2 x w//2 = 3 x 5 at rows 1..3, columns 2..6
    assert odd.sum() == 15 and odd[1:4, 2:7].all() and not odd[0].any() and not odd[:, 7:].any()


def test_apply_mask_zeroes_exactly_the_masked_pixels():
    images = torch.randint(1, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    before = images.clone()
    mask = central_mask(8, 8)
    out = apply_mask(images, mask)
    assert torch.equal(images, before)  # the input is left alone
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out == 0, mask.expand_as(out))  # no original pixel is 0, so zeros are the mask
    assert torch.equal(out[:, :, ~mask], images[:, :, ~mask])
    per_image = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) < 0.3
    out = apply_mask(images, per_image)
    assert torch.equal(out == 0, per_image.expand_as(out))
    assert torch.equal(out[~per_image.expand_as(out)], images[~per_image.expand_as(out)])


def test_apply_mask_names_the_expected_shape():
    images = torch.zeros(5, 3, 32, 32, dtype=torch.uint8)
    expected = r"a mask for 3x32x32 images must be 32x32 \(or 5x1x32x32\), got "
    for bad, got in ((central_mask(16, 16), "16x16"), (torch.zeros(5, 3, 32, 32, dtype=torch.bool), "5x3x32x32")):
        with pytest.raises(ShapeError, match=expected + got):
            apply_mask(images, bad)
    with pytest.raises(DataError, match="masks are torch.bool"):
        apply_mask(images, central_mask(32, 32).to(torch.uint8))


def test_inpaint_conditions_hide_the_central_quarter(pairs):
    ds = pairs["inpaint", "train"]
    mask = central_mask(32, 32)
    assert not ds.conds[:, :, mask].any()
    assert torch.equal(ds.conds[:, :, ~mask], ds.images[:, :, ~mask])
    assert ds.images[:, :, mask].any()  # the hidden pixels were not black already


# ---------------------------------------------------------------- sketch


def test_sketch_edges_are_binary_and_follow_canny(photos):
    photo = photos["chelsea"]
    edges = sketch_edges(torch.from_numpy(photo.transpose(2, 0, 1).copy())[None])
    assert edges.dtype == torch.uint8 and edges.shape == (1, 1, *photo.shape[:2])
    assert set(edges.unique().tolist()) == {0, 255}
    assert 0.01 < edges.double().mean() / 255 < 0.3
    expected = canny(pillow_grey(photo) / 255.0, sigma=SKETCH_SIGMA)
    assert np.array_equal(edges[0, 0].numpy() == 255, expected)
    # A grey image gives the edges of its RGB version.
    rgb = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sketch_edges(rgb), sketch_edges(to_grey(rgb)))
    with pytest.raises(ShapeError, match=r"\(N, 1 or 3, H, W\)"):
        sketch_edges(rgb[:, :2])


def test_sketch_conditions_are_whole_photo_edges_cropped(pairs, photos):
    for split, stride in (("train", 16), ("test", 32)):
        ds = pairs["sketch", split]
        assert set(ds.conds.unique().tolist()) == {0, 255}
        fraction = ds.conds.double().mean() / 255
        assert 0.02 < fraction < 0.3  # some edges, mostly background
        names = [n for n in PHOTOGRAPHS if PHOTO_SPLIT[n] == split]
        whole = [canny(pillow_grey(photos[n]) / 255.0, sigma=SKETCH_SIGMA).astype(np.uint8)[:, :, None] for n in names]
        expected = np.concatenate([strided_crops(e * 255, 32, stride) for e in whole])
        assert np.array_equal(ds.conds.numpy(), expected)


def test_whole_photo_edges_reach_the_crop_borders(pairs):
    ds = pairs["sketch", "test"]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    per_crop = sketch_edges(ds.images)
    # Canny skips the outermost ring of its input: per-crop edge maps would be blank there ...
    assert not per_crop[:, :, border].any()
    # ... while crops of the whole-photo edge map carry the edges that cross the border.
    assert (ds.conds[:, :, border] > 0).double().mean() > 0.05
    assert not torch.equal(per_crop, ds.conds)


# ---------------------------------------------------------------- PairedDataset and the registry


@pytest.mark.parametrize("task", list(LOADERS))
def test_paired_dataset_refuses_size_mismatches_of_same_size_tasks(task):
    targets = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    conds = torch.zeros(2, COND_CHANNELS[task], 16, 16, dtype=torch.uint8)
    match = (
        f"{task} targets are 32x32 but their conditions are 16x16; {task} pairs share their height and width: "
        "give each condition the size of its target"
    )
    with pytest.raises(DataError, match=match):
        PairedDataset(targets, conds, task=task)
    ds = PairedDataset(targets, torch.zeros(2, COND_CHANNELS[task], 32, 32, dtype=torch.uint8), task=task)
    assert (ds.scale, ds.n_bits) == (1, 8)


def test_registry_names_and_get_dataset(pairs):
    names = list_datasets()
    for name in NAMES.values():
        assert name in PAIRED_DATASETS and names.index("photos-sr4") < names.index(name) < names.index("mnist")
    ds = get_dataset("photos-colorize", "test")
    assert ds.name == "photos-colorize" and torch.equal(ds.conds, pairs["colorize", "test"].conds)
    sketch = get_dataset("photos-sketch", "test")
    assert torch.equal(sketch.conds, pairs["sketch", "test"].conds)


def test_translation_pairs_can_be_padded_and_downsampled(pairs):
    padded = get_dataset("photos-inpaint", "test", pad_to=40)
    assert padded.image_shape == padded.cond_shape == (3, 40, 40)
    assert torch.equal(padded.conds[:, :, 4:36, 4:36], pairs["inpaint", "test"].conds)
    small = get_dataset("photos-colorize", "test", downsample=2)
    assert small.image_shape == (3, 16, 16) and small.cond_shape == (1, 16, 16)


def test_check_compatible_lists_every_paired_dataset():
    cfg = SimpleNamespace(model=SimpleNamespace(name="caflow-colorize"), data=SimpleNamespace(name="patches32"))
    model = SimpleNamespace(cond_shape=(1, 32, 32), image_shape=(3, 32, 32))
    data = get_dataset("digits8", "test")
    with pytest.raises(ShapeError, match="needs a paired dataset") as info:
        check_compatible(model, data, cfg)
    assert ", ".join(sorted(PAIRED_DATASETS)) in str(info.value) and "photos-sketch" in str(info.value)
