"""Tests of the paired task datasets: PairedDataset, bicubic pairs, shapes-seg and the DRIVE reader."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from msflow.data import PairedDataset, get_dataset, list_datasets
from msflow.data.dataset import downsample_images
from msflow.data.drive import load_drive
from msflow.data.pairs import downscale_bicubic, photo_crops, photo_pairs, strided_crops
from msflow.data.photos import PHOTO_SPLIT, PHOTOGRAPHS, bundled_photos
from msflow.data.segmentation import load_shape_segmentation
from msflow.errors import DataError


def u8(*shape: int, value: int = 0) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.uint8)


# ---------------------------------------------------------------- PairedDataset


def test_paired_dataset_items_loader_and_repr():
    targets = torch.arange(4 * 3 * 8 * 8).reshape(4, 3, 8, 8).to(torch.uint8)
    ds = PairedDataset(targets, downscale_bicubic(targets, 2), task="superres", name="toy")
    target, cond = ds[2]
    assert torch.equal(target, targets[2]) and cond.shape == (3, 4, 4)
    assert (ds.scale, ds.n_bits, ds.cond_shape, ds.image_shape) == (2, 8, (3, 4, 4), (3, 8, 8))
    assert ds.labels.tolist() == [-1] * 4 and ds.fov is None
    xb, cb = next(iter(DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 8, 8) and cb.shape == (4, 3, 4, 4)
    assert repr(ds) == "PairedDataset(name='toy', task='superres', n=4, target=3x8x8, cond=3x4x4)"
    seg = PairedDataset(u8(2, 1, 5, 5, value=1), u8(2, 3, 5, 5), task="segment")
    assert (seg.n_bits, seg.scale, seg.task) == (1, 1, "segment")


@pytest.mark.parametrize(
    "targets, conds, task, match",
    [
        (u8(3, 1, 8, 8), u8(2, 1, 8, 8), "segment", "3 targets but 2 conditions"),
        (
            u8(2, 1, 8, 8, value=255),
            u8(2, 3, 8, 8),
            "segment",
            "segmentation masks must hold only 0 and 1, found values up to 255; divide 0/255 masks by 255",
        ),
        (u8(2, 1, 8, 8, value=7), u8(2, 3, 8, 8), "segment", "found values up to 7; threshold"),
        (u8(2, 1, 8, 8), u8(2, 3, 8, 6), "segment", "masks are 8x8 but their images are 8x6"),
        (u8(2, 3, 8, 8), u8(2, 3, 3, 3), "superres", "integer factor"),
        (u8(2, 3, 8, 8), u8(2, 3, 8, 8), "superres", "integer factor >= 2"),
        (u8(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), "superres", "conditions must be a torch.uint8"),
        (u8(2, 3, 8, 8), u8(2, 3, 4, 4), "deblur", "unknown task 'deblur'"),
    ],
)
def test_paired_dataset_validates(targets, conds, task, match):
    with pytest.raises(DataError, match=match):
        PairedDataset(targets, conds, task=task)


def test_paired_dataset_fov_must_be_binary_and_shaped():
    masks, images = u8(2, 1, 4, 4), u8(2, 3, 4, 4)
    with pytest.raises(DataError, match="field-of-view mask must be uint8"):
        PairedDataset(masks, images, task="segment", fov=u8(2, 1, 4, 5))
    with pytest.raises(DataError, match="field-of-view masks must hold only 0 and 1"):
        PairedDataset(masks, images, task="segment", fov=u8(2, 1, 4, 4, value=255))


# ---------------------------------------------------------------- bicubic downscaling


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("factor", [2, 4])
def test_downscale_bicubic_constant_and_ramp(channels, factor):
    constant = downscale_bicubic(u8(2, channels, 16, 24, value=201), factor)
    assert constant.shape == (2, channels, 16 // factor, 24 // factor) and constant.dtype == torch.uint8
    assert constant.eq(201).all()
    # A linear ramp is reproduced exactly by the cubic kernel, so each output pixel is the
    # mean of the block it covers.
    ramp = (torch.arange(32) * 8).to(torch.uint8).expand(1, channels, 32, 32).contiguous()
    for image in (ramp, ramp.transpose(-1, -2).contiguous()):
        diff = downscale_bicubic(image, factor).int() - downsample_images(image, factor).int()
        assert diff.abs().max() <= 1


def test_downscale_bicubic_antialiases():
    # Without antialiasing, shrinking white noise by 4 keeps most of its variance; averaging
    # over the widened kernel leaves about 1/4 of its standard deviation.
    noise = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    small = downscale_bicubic(noise, 4).double()
    assert small.std() < 0.4 * noise.double().std()
    assert abs(small.mean() - noise.double().mean()) < 2


def test_downscale_bicubic_channels_are_independent_and_errors():
    images = torch.randint(0, 256, (3, 3, 12, 12), dtype=torch.uint8)
    rgb = downscale_bicubic(images, 2)
    for k in range(3):
        assert torch.equal(rgb[:, k : k + 1], downscale_bicubic(images[:, k : k + 1], 2))
    two = torch.cat([downscale_bicubic(images[:, k : k + 1], 3) for k in range(2)], dim=1)
    assert torch.equal(downscale_bicubic(images[:, :2], 3), two)
    with pytest.raises(DataError, match="cannot downscale 12x12 images by 5: crop .* to 10x10"):
        downscale_bicubic(images, 5)
    with pytest.raises(DataError, match="uint8"):
        downscale_bicubic(images.float(), 2)


def test_strided_crops_match_cut_patches_ordering():
    photo = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8, 1)
    crops = strided_crops(photo, 4, 2)
    assert crops.shape == (6, 1, 4, 4)  # 2 rows x 3 columns
    assert crops[1, 0, 0].tolist() == [2, 3, 4, 5] and crops[3, 0, 0].tolist() == [16, 17, 18, 19]


# ---------------------------------------------------------------- photos-sr2 / photos-sr4


@pytest.fixture(scope="module")
def sr2() -> dict[str, PairedDataset]:
    return {split: get_dataset("photos-sr2", split) for split in ("train", "test")}


def test_photos_sr_shapes_and_conditions(sr2):
    train, test = sr2["train"], sr2["test"]
    assert (len(train), len(test)) == (5752, 862) and train.name == "photos-sr2"
    assert train.image_shape == (3, 32, 32) and train.cond_shape == (3, 16, 16)
    assert train.task == "superres" and train.scale == 2 and train.n_bits == 8
    assert torch.equal(test.images, photo_crops("test", 32))
    assert torch.equal(test.conds, downscale_bicubic(test.images, 2))
    assert torch.equal(train.conds[:500], downscale_bicubic(train.images[:500], 2))
    sr4 = get_dataset("photos-sr4", "test")
    assert sr4.cond_shape == (3, 8, 8) and sr4.scale == 4 and torch.equal(sr4.images, test.images)


def test_photos_sr_split_is_by_photo(sr2):
    train_crops = {bytes(c) for c in sr2["train"].images.reshape(len(sr2["train"]), -1).numpy()}
    assert not any(bytes(c) in train_crops for c in sr2["test"].images.reshape(len(sr2["test"]), -1).numpy())
    first = next(n for n in PHOTOGRAPHS if PHOTO_SPLIT[n] == "train")
    photo = bundled_photos()[first]
    assert np.array_equal(sr2["train"].images[1].numpy(), photo[:32, 16:48].transpose(2, 0, 1))  # stride 16


@pytest.mark.parametrize("option", [{"pad_to": 64}, {"downsample": 2}])
def test_resizing_super_resolution_pairs_is_refused(option):
    with pytest.raises(DataError, match="do not apply to super-resolution pairs"):
        get_dataset("photos-sr4", "test", **option)


def test_photo_pairs():
    pairs = photo_pairs("test", 4)
    colour = bundled_photos()
    assert (
        list(pairs) == [n for n in PHOTOGRAPHS if PHOTO_SPLIT[n] == "test"] == ["chelsea", "coffee", "rocket", "china"]
    )
    hr, lr = pairs["chelsea"]
    assert hr.shape == (1, 3, 300, 448) and lr.shape == (1, 3, 75, 112)
    assert np.array_equal(hr[0].permute(1, 2, 0).numpy(), colour["chelsea"][:300, :448])
    assert torch.equal(lr, downscale_bicubic(hr, 4))


# ---------------------------------------------------------------- shapes-seg


def test_shapes_seg_sizes_and_values():
    for split, n in (("train", 2000), ("test", 200)):
        ds = get_dataset("shapes-seg", split)
        assert len(ds) == n and ds.name == "shapes-seg" and (ds.task, ds.n_bits) == ("segment", 1)
        assert ds.image_shape == (1, 64, 64) and ds.cond_shape == (3, 64, 64)
        assert ds.images.dtype == ds.conds.dtype == torch.uint8 and ds.conds.is_contiguous()
        assert set(ds.images.unique().tolist()) == {0, 1}
        fraction = ds.images.double().mean((1, 2, 3))
        assert 0.05 <= fraction.mean() <= 0.20 and (fraction > 0).all()
        assert 0.02 <= fraction.quantile(0.05) and fraction.quantile(0.95) <= 0.2


def best_global_threshold_f(values: torch.Tensor, masks: torch.Tensor) -> float:
    """The best F-score of ``value < t`` or ``value > t`` over all thresholds ``t``, from histograms."""
    fg = torch.bincount(values[masks], minlength=256).double()
    bg = torch.bincount(values[~masks], minlength=256).double()
    best = 0.0
    for order in (lambda x: x, lambda x: x.flip(0)):
        tp, fp = order(order(fg).cumsum(0)), order(order(bg).cumsum(0))
        best = max(best, (2 * tp / (tp + fp + fg.sum())).max().item())
    return best


def test_shapes_seg_is_learnable_but_not_thresholdable():
    ds = get_dataset("shapes-seg", "test")
    masks = ds.images.double()
    luma = (ds.conds.double() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    # Vessels stand out from a ring of background around them (median ~45 grey levels) ...
    ring = torch.nn.functional.max_pool2d(masks, 7, 1, 3) - torch.nn.functional.max_pool2d(masks, 3, 1, 1)
    inside = (luma * masks).sum((1, 2, 3)) / masks.sum((1, 2, 3))
    around = (luma * ring).sum((1, 2, 3)) / ring.sum((1, 2, 3))
    assert (inside - around).abs().median() > 25
    # ... but no global threshold of a channel or of the luma finds them (F ~0.2; all-vessel ~0.16).
    flat = ds.images.flatten().bool()
    for values in (*ds.conds.unbind(1), luma.round()[:, 0]):
        assert best_global_threshold_f(values.flatten().long(), flat) < 0.35


def test_shapes_seg_is_seeded_and_splits_differ():
    first, again = (load_shape_segmentation("test", n=12, seed=3) for _ in range(2))
    assert torch.equal(first.images, again.images) and torch.equal(first.conds, again.conds)
    other = load_shape_segmentation("test", n=12, seed=4)
    assert not torch.equal(first.images, other.images)
    train = load_shape_segmentation("train", n=12, seed=3)
    assert not torch.equal(first.images, train.images)
    assert load_shape_segmentation("train", n=3, size=32).image_shape == (1, 32, 32)
    with pytest.raises(DataError, match="size <= 172"):
        load_shape_segmentation("train", n=3, size=256)


def test_shapes_seg_pad_and_downsample():
    plain = get_dataset("shapes-seg", "test")
    padded = get_dataset("shapes-seg", "test", pad_to=72)
    assert padded.image_shape == (1, 72, 72) and padded.cond_shape == (3, 72, 72)
    assert torch.equal(padded.images[:, :, 4:68, 4:68], plain.images) and padded.images.sum() == plain.images.sum()
    assert torch.equal(padded.conds[:, :, 4:68, 4:68], plain.conds) and padded.conds.sum() == plain.conds.sum()
    small = get_dataset("shapes-seg", "test", downsample=2)
    assert small.image_shape == (1, 32, 32) and set(small.images.unique().tolist()) <= {0, 1}
    assert torch.equal(small.conds, downsample_images(plain.conds, 2))
    expected = torch.nn.functional.avg_pool2d(plain.images.double(), 2) >= 0.5
    assert torch.equal(small.images.bool(), expected)


# ---------------------------------------------------------------- DRIVE


def write_drive(root: Path, size: tuple[int, int] = (10, 8)) -> dict[str, np.ndarray]:
    """A tiny DRIVE copy: 2 training (21, 22) and 2 test (1, 2) images of ``size`` (W, H)."""
    rng = np.random.default_rng(5)
    w, h = size
    arrays = {}
    for kind, numbers in (("training", ["22", "21"]), ("test", ["01", "02"])):
        for sub in ("images", "1st_manual", "mask"):
            (root / kind / sub).mkdir(parents=True, exist_ok=True)
        for number in numbers:
            photo = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            vessels = (rng.random((h, w)) < 0.2).astype(np.uint8) * 255
            fov = np.zeros((h, w), np.uint8)
            fov[1:-1, 1:-1] = 255
            Image.fromarray(photo).save(root / kind / "images" / f"{number}_{kind}.tif")
            Image.fromarray(vessels).save(root / kind / "1st_manual" / f"{number}_manual1.gif")
            Image.fromarray(fov).save(root / kind / "mask" / f"{number}_{kind}_mask.gif")
            arrays[f"{kind}/{number}"] = photo, vessels, fov
    (root / "training" / "images" / "Thumbs.db").write_bytes(b"ignored")
    return arrays


def test_drive_round_trip(tmp_path):
    arrays = write_drive(tmp_path)
    train = get_dataset("drive", "train", root=tmp_path)
    assert train.name == "drive" and (train.task, train.n_bits, len(train)) == ("segment", 1, 2)
    assert train.image_shape == (1, 8, 10) and train.cond_shape == (3, 8, 10) and train.fov.shape == (2, 1, 8, 10)
    photo, vessels, fov = arrays["training/21"]  # files are ordered by number: 21 before 22
    assert np.array_equal(train.conds[0].permute(1, 2, 0).numpy(), photo)
    assert np.array_equal(train.images[0, 0].numpy(), vessels // 255)
    assert np.array_equal(train.fov[0, 0].numpy(), fov // 255)
    test = load_drive("test", tmp_path)
    assert np.array_equal(test.images[1, 0].numpy(), arrays["test/02"][1] // 255)
    padded = get_dataset("drive", "test", root=tmp_path, pad_to=16)
    assert padded.fov.shape == (2, 1, 16, 16) and padded.fov.sum() == test.fov.sum()
    assert torch.equal(padded.images[:, :, 4:12, 3:13], test.images)


def test_drive_missing_files_are_named(tmp_path):
    write_drive(tmp_path)
    manual = tmp_path / "test" / "1st_manual" / "02_manual1.gif"
    manual.unlink()
    image = tmp_path / "test" / "images" / "02_test.tif"
    with pytest.raises(DataError, match=f"image {re.escape(str(image))} has no vessel annotation: .*02_manual1.gif"):
        get_dataset("drive", "test", root=tmp_path)
    image.unlink()
    (tmp_path / "test" / "mask" / "02_test_mask.gif").unlink()
    assert len(get_dataset("drive", "test", root=tmp_path)) == 1
    extra = tmp_path / "test" / "1st_manual" / "07_manual1.gif"
    Image.new("L", (10, 8)).save(extra)
    with pytest.raises(DataError, match=f"vessel annotation {re.escape(str(extra))} has no image"):
        get_dataset("drive", "test", root=tmp_path)
    masks = tmp_path / "training" / "mask"
    for f in masks.iterdir():
        f.unlink()
    masks.rmdir()
    with pytest.raises(DataError, match=f"DRIVE folder {re.escape(str(masks))} is missing"):
        get_dataset("drive", "train", root=tmp_path)


def test_drive_sizes_and_values(tmp_path):
    write_drive(tmp_path)
    odd = tmp_path / "training" / "images" / "22_training.tif"
    Image.new("RGB", (12, 8)).save(odd)
    with pytest.raises(DataError, match=f"image {re.escape(str(odd))} is 12x8 but .*21_training.tif is 10x8"):
        get_dataset("drive", "train", root=tmp_path)
    grey = tmp_path / "test" / "1st_manual" / "01_manual1.gif"
    Image.new("L", (10, 8), 128).save(grey)
    with pytest.raises(DataError, match="holds values 128: expected 0 .* and 255"):
        get_dataset("drive", "test", root=tmp_path)
    Image.new("L", (9, 8)).save(grey)
    with pytest.raises(DataError, match="01_manual1.gif is 9x8 but its image .*01_test.tif is 10x8"):
        get_dataset("drive", "test", root=tmp_path)


def test_drive_needs_an_existing_nonempty_root(tmp_path):
    with pytest.raises(DataError, match="root="):
        get_dataset("drive")
    with pytest.raises(DataError, match="does not exist"):
        get_dataset("drive", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="is empty"):
        get_dataset("drive", root=tmp_path)
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="training is missing"):
        get_dataset("drive", "train", root=tmp_path)


def test_registered_names():
    names = list_datasets()
    assert {"photos-sr2", "photos-sr4", "shapes-seg", "drive"} <= set(names)
    assert names.index("shapes-seg") < names.index("mnist") and names[-1] == "drive"
