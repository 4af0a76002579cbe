"""Tests of msflow.data: bundled sets, the standard-format readers and their error messages."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from msflow.data import ImageDataset, get_dataset, list_datasets, pad_images
from msflow.data.bundled import cut_patches
from msflow.data.photos import PHOTO_SPLIT, bundled_photos
from msflow.errors import DataError

BUNDLED = ["mnist5k", "digits8", "patches32", "patches32-grey", "photos-sr2", "photos-sr4"]
BUNDLED += ["photos-colorize", "photos-inpaint", "photos-sketch", "shapes-seg"]
READERS = ["mnist", "fashion-mnist", "cifar10", "imagenet32", "imagenet64", "folder", "drive"]


# ---------------------------------------------------------------- ImageDataset, pad_images


def test_image_dataset_items_and_loader():
    images = torch.arange(3 * 2 * 4 * 4, dtype=torch.int64).reshape(3, 2, 4, 4).to(torch.uint8)
    ds = ImageDataset(images, torch.tensor([0, 1, 2], dtype=torch.int32), name="toy")
    x, y = ds[1]
    assert x.dtype == torch.uint8 and x.shape == (2, 4, 4) and torch.equal(x, images[1])
    assert y.dtype == torch.int64 and y.shape == () and int(y) == 1
    assert len(ds) == 3 and ds.image_shape == (2, 4, 4) and ds.n_bits == 8
    xb, yb = next(iter(DataLoader(ds, batch_size=3)))
    assert xb.shape == (3, 2, 4, 4) and yb.tolist() == [0, 1, 2]


def test_image_dataset_default_labels_are_minus_one():
    ds = ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))
    assert ds.labels.tolist() == [-1, -1]


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (torch.zeros(2, 1, 4, 4), None, "uint8"),
        (np.zeros((2, 1, 4, 4), np.uint8), None, "uint8"),
        (torch.zeros(1, 4, 4, dtype=torch.uint8), None, r"\(N, C, H, W\)"),
        (torch.zeros(0, 1, 4, 4, dtype=torch.uint8), None, "empty"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "2 labels"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2), "integers"),
    ],
)
def test_image_dataset_validates(images, labels, match):
    with pytest.raises(DataError, match=match):
        ImageDataset(images, labels)


def test_pad_images_symmetric():
    images = torch.randint(1, 256, (2, 1, 28, 28), dtype=torch.uint8)
    padded = pad_images(images, 32)
    assert padded.shape == (2, 1, 32, 32) and padded.dtype == torch.uint8
    assert torch.equal(padded[:, :, 2:30, 2:30], images)
    border = padded.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0
    assert torch.equal(pad_images(images, 28), images)


def test_pad_images_odd_and_too_small():
    padded = pad_images(torch.full((1, 3, 3, 4), 7, dtype=torch.uint8), 6)
    assert padded[0, 0].ne(0).nonzero().tolist()[0] == [1, 1]  # 1 before, 2 after vertically
    assert padded[0, 0, 1:4, 1:5].eq(7).all() and padded.sum() == 7 * 3 * 12
    with pytest.raises(DataError, match="pad_to >= 28"):
        pad_images(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), 16)


# ---------------------------------------------------------------- registry


def test_list_datasets():
    assert list_datasets() == BUNDLED + READERS


def test_unknown_name_lists_choices():
    with pytest.raises(DataError, match="unknown dataset 'mnsit'.*mnist5k.*folder"):
        get_dataset("mnsit")


@pytest.mark.parametrize("name", ["mnist5k", "folder"])
def test_bad_split(name):
    with pytest.raises(DataError, match="split 'val'.*'train' or 'test'"):
        get_dataset(name, "val")


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("name", READERS)
def test_readers_need_an_existing_nonempty_root(name, tmp_path):
    with pytest.raises(DataError, match="root="):
        get_dataset(name)
    with pytest.raises(DataError, match="does not exist"):
        get_dataset(name, root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="is empty"):
        get_dataset(name, root=tmp_path)


# ---------------------------------------------------------------- bundled sets


def test_mnist5k_split_and_padding():
    train, test = get_dataset("mnist5k", "train"), get_dataset("mnist5k", "test", pad_to=32)
    assert (len(train), len(test)) == (4000, 1000)
    assert train.image_shape == (1, 28, 28) and test.image_shape == (1, 32, 32)
    assert train.images.dtype == torch.uint8 and train.images.max() == 255
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert test.images[:, :, :2].sum() == 0 and test.images[:, :, :, 30:].sum() == 0


def test_mnist5k_callers_cannot_corrupt_the_cache():
    first = get_dataset("mnist5k", "test")
    expected = first.images.clone()
    first.images += 1
    assert torch.equal(get_dataset("mnist5k", "test").images, expected)


def test_digits8():
    train, test = get_dataset("digits8", "train"), get_dataset("digits8", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.image_shape == (1, 8, 8) and train.images.dtype == torch.uint8
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.cat([train.images, test.images]).unique().tolist()) <= allowed
    assert train.images.max() == 255 and set(test.labels.tolist()) == set(range(10))


def test_bundled_photos():
    colour, grey = bundled_photos(grey=False), bundled_photos(grey=True)
    assert list(grey) == list(PHOTO_SPLIT) and len(grey) == 23 and len(colour) == 12
    assert list(colour) == [name for name in PHOTO_SPLIT if name in colour]
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in colour.values())
    assert all(p.dtype == np.uint8 and p.shape[2] == 1 for p in grey.values())
    rgb = colour["astronaut"].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey["astronaut"][:, :, 0] - luma).max() <= 1.0
    assert set(PHOTO_SPLIT.values()) == {"train", "test"}
    grey["camera"][0, 0] = 0  # a fresh dict of writable arrays


@pytest.mark.parametrize(
    "name, grey, counts", [("patches32", False, (4267, 1118)), ("patches32-grey", True, (5878, 1482))]
)
def test_patches_split_by_photo(name, grey, counts):
    train, test = get_dataset(name, "train"), get_dataset(name, "test")
    assert (len(train), len(test)) == counts
    channels = 1 if grey else 3
    assert train.image_shape == test.image_shape == (channels, 32, 32)
    assert (train.labels == -1).all() and (test.labels == -1).all()
    assert 0.15 < len(test) / (len(train) + len(test)) < 0.25

    photos = bundled_photos(grey=grey)
    by_split = {
        split: np.concatenate([cut_patches(p, 32) for n, p in photos.items() if PHOTO_SPLIT[n] == split])
        for split in ("train", "test")
    }
    assert np.array_equal(train.images.numpy(), by_split["train"])
    assert np.array_equal(test.images.numpy(), by_split["test"])
    first = next(n for n in photos if PHOTO_SPLIT[n] == "train")
    assert np.array_equal(train.images[0].numpy(), photos[first][:32, :32].transpose(2, 0, 1))
    assert torch.equal(get_dataset(name, "test").images, test.images)


def test_cut_patches_row_major():
    photo = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6, 1)
    patches = cut_patches(photo, 2)
    assert patches.shape == (6, 1, 2, 2)
    assert patches[1, 0].tolist() == [[2, 3], [8, 9]] and patches[3, 0].tolist() == [[12, 13], [18, 19]]


# ---------------------------------------------------------------- MNIST IDX


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(root: Path, gz: bool, n: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        arrays[split] = images, labels
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, gz, name):
    arrays = write_mnist(tmp_path, gz)
    for split, (images, labels) in arrays.items():
        ds = get_dataset(name, split, root=str(tmp_path))
        assert ds.name == name and ds.image_shape == (1, 28, 28)
        assert np.array_equal(ds.images[:, 0].numpy(), images)
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert get_dataset(name, "test", root=tmp_path, pad_to=32).image_shape == (1, 32, 32)


def test_idx_dotted_file_names(tmp_path):
    write_idx(tmp_path / "t10k-images.idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([3, 4], np.uint8))
    assert get_dataset("mnist", "test", root=tmp_path).labels.tolist() == [3, 4]


def test_idx_wrong_magic(tmp_path):
    write_mnist(tmp_path, gz=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[3] = 0x03
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{re.escape(str(bad))}.*magic number 0x00000803, expected 0x00000801"):
        get_dataset("mnist", "train", root=tmp_path)


@pytest.mark.parametrize("cut", [1, 100, 9])
def test_idx_truncated(tmp_path, cut):
    write_mnist(tmp_path, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - cut] if cut != 9 else data[:9])
    with pytest.raises(DataError, match=f"IDX file {re.escape(str(bad))} is"):
        get_dataset("mnist", "test", root=tmp_path)


def test_idx_too_long_and_bad_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes()) + b"\0"))
    with pytest.raises(DataError, match="needs"):
        get_dataset("mnist", "train", root=tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    with pytest.raises(DataError, match=f"cannot read IDX file {re.escape(str(labels))}"):
        get_dataset("mnist", "test", root=tmp_path)


def test_idx_count_mismatch_and_missing_file(tmp_path):
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        get_dataset("mnist", "train", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\[.gz\] not found"):
        get_dataset("fashion-mnist", "test", root=tmp_path)


# ---------------------------------------------------------------- CIFAR-10 binary


def write_cifar(folder: Path, n: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    records = {}
    for i, file in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        rec[:, 0] = (np.arange(n) + i) % 10
        (folder / file).write_bytes(rec.tobytes())
        records[file] = rec
    return records


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_round_trip(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    records = write_cifar(folder)
    train, test = get_dataset("cifar10", "train", root=tmp_path), get_dataset("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (15, 3) and train.image_shape == (3, 32, 32)
    rec = records["test_batch.bin"]
    assert test.labels.tolist() == rec[:, 0].tolist()
    assert int(test.images[1, 2, 5, 7]) == rec[1, 1 + 2 * 1024 + 5 * 32 + 7]  # CHW, row-major
    train_records = np.concatenate([records[f"data_batch_{k}.bin"] for k in range(1, 6)])
    assert np.array_equal(train.images.reshape(15, -1).numpy(), train_records[:, 1:])


def test_cifar_bad_length_and_label(tmp_path):
    write_cifar(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"{re.escape(str(bad))} is 9214 bytes, not a multiple of 3073"):
        get_dataset("cifar10", "train", root=tmp_path)
    test = tmp_path / "test_batch.bin"
    test.write_bytes(bytes([42]) + bytes(3072))
    with pytest.raises(DataError, match="label 42"):
        get_dataset("cifar10", "test", root=tmp_path)


def test_cifar_pickled_version_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for file in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / file).write_bytes(b"not read")
    for root in (tmp_path, folder):
        with pytest.raises(DataError, match="pickled CIFAR-10 python version.*never unpickles.*binary"):
            get_dataset("cifar10", "train", root=root)


def test_cifar_missing_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match="data_batch_5.bin not found"):
        get_dataset("cifar10", "train", root=tmp_path)


# ---------------------------------------------------------------- downsampled ImageNet .npz


def write_npz(path: Path, n: int, size: int, first_label: int = 1, **extra) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(n).integers(0, 256, (n, 3 * size * size), dtype=np.uint8)
    labels = np.arange(first_label, first_label + n)
    np.savez(path, data=data, labels=labels, **extra)
    return data


def test_npz_round_trip_and_batch_order(tmp_path):
    train_dir = tmp_path / "Imagenet32_train_npz"
    data = {k: write_npz(train_dir / f"train_data_batch_{k}.npz", 2, 32, first_label=k) for k in (1, 2, 10)}
    val = write_npz(tmp_path / "val_data.npz", 3, 32, mean=np.zeros(3))
    train = get_dataset("imagenet32", "train", root=tmp_path)
    assert len(train) == 6 and train.image_shape == (3, 32, 32)
    assert train.labels.tolist() == [0, 1, 1, 2, 9, 10]  # batches 1, 2, 10; labels 0-based
    assert np.array_equal(train.images[4].numpy().reshape(-1), data[10][0])  # CHW rows
    test = get_dataset("imagenet32", "test", root=tmp_path)
    assert np.array_equal(test.images.reshape(3, -1).numpy(), val) and test.labels.tolist() == [0, 1, 2]


def test_npz_64_and_size_mismatch(tmp_path):
    write_npz(tmp_path / "val_data.npz", 2, 64)
    assert get_dataset("imagenet64", "test", root=tmp_path).image_shape == (3, 64, 64)
    with pytest.raises(DataError, match="these are 64x64 images: use imagenet64"):
        get_dataset("imagenet32", "test", root=tmp_path)


def test_npz_wrong_keys_and_labels(tmp_path):
    path = tmp_path / "val_data.npz"
    np.savez(path, x=np.zeros((2, 3072), np.uint8), y=np.ones(2))
    with pytest.raises(
        DataError, match=f"{re.escape(str(path))} has arrays \\['x', 'y'\\], expected 'data' and 'labels'"
    ):
        get_dataset("imagenet32", "test", root=tmp_path)
    write_npz(path, 2, 32, first_label=0)
    with pytest.raises(DataError, match="expected 1..1000"):
        get_dataset("imagenet32", "test", root=tmp_path)
    # An object array would need unpickling; it is refused from its header alone.
    np.savez(path, data=np.zeros((2, 3072), np.uint8), labels=np.array([1, "a"], dtype=object))
    with pytest.raises(DataError, match="'labels' is object"):
        get_dataset("imagenet32", "test", root=tmp_path)
    path.write_bytes(b"PK junk")
    with pytest.raises(DataError, match=f"cannot read {re.escape(str(path))}"):
        get_dataset("imagenet32", "test", root=tmp_path)


def test_npz_missing_split(tmp_path):
    write_npz(tmp_path / "val_data.npz", 2, 32)
    with pytest.raises(DataError, match="no train_data_batch_\\*.npz"):
        get_dataset("imagenet32", "train", root=tmp_path)


# ---------------------------------------------------------------- image folders


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_folder_with_split_and_class_subfolders(tmp_path):
    for i, cls in enumerate(["zebra", "ant", "bee"]):
        save(tmp_path / "train" / cls / f"{i}.png", Image.new("RGB", (8, 6), (i, 2 * i, 3 * i)))
        save(tmp_path / "train" / cls / "deeper" / f"{i}.jpg", Image.new("RGB", (8, 6), (9, 9, 9)))
    save(tmp_path / "test" / "zebra" / "t.png", Image.new("RGB", (8, 6), (7, 8, 9)))
    train = get_dataset("folder", "train", root=tmp_path)
    assert len(train) == 6 and train.image_shape == (3, 6, 8) and train.name == "folder"
    # sorted class names: ant=0, bee=1, zebra=2; files in sorted path order
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.images[0, :, 0, 0].tolist() == [1, 2, 3]
    test = get_dataset("folder", "test", root=tmp_path)
    assert test.labels.tolist() == [2] and test.images[0, :, 3, 3].tolist() == [7, 8, 9]


def test_folder_hash_split_without_labels(tmp_path):
    for i in range(25):
        save(tmp_path / f"img{i:02d}.png", Image.new("L", (5, 5), i))
    (tmp_path / ".hidden").mkdir()
    save(tmp_path / ".hidden" / "junk.png", Image.new("L", (9, 9)))
    (tmp_path / "notes.txt").write_text("ignored")
    train, test = get_dataset("folder", "train", root=tmp_path), get_dataset("folder", "test", root=tmp_path)
    assert (len(train), len(test)) == (23, 2) and train.image_shape == (1, 5, 5)
    values = sorted(train.images[:, 0, 0, 0].tolist() + test.images[:, 0, 0, 0].tolist())
    assert values == list(range(25)) and (train.labels == -1).all()
    assert torch.equal(get_dataset("folder", "test", root=tmp_path).images, test.images)


def test_folder_corrupt_image_is_named(tmp_path):
    good = save(tmp_path / "train" / "a.png", Image.new("RGB", (16, 16)))
    bad = tmp_path / "train" / "b.png"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(bad))}: .*delete or replace the file"):
        get_dataset("folder", "train", root=tmp_path)
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=f"cannot read image {re.escape(str(bad))}"):
        get_dataset("folder", "train", root=tmp_path)


def test_folder_size_mismatch_names_file(tmp_path):
    save(tmp_path / "train" / "a.png", Image.new("L", (8, 8)))
    save(tmp_path / "test" / "b.png", Image.new("L", (8, 9)))
    odd = tmp_path / "test" / "b.png"
    with pytest.raises(DataError, match=f"{re.escape(str(odd))} is 8x9 but .*a.png is 8x8: resize"):
        get_dataset("folder", "train", root=tmp_path)


def test_folder_empty_split_and_mixed_layout(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "cats" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=f"no images found in {re.escape(str(tmp_path / 'train'))}"):
        get_dataset("folder", "train", root=tmp_path)
    with pytest.raises(DataError, match="test does not exist"):
        get_dataset("folder", "test", root=tmp_path)
    save(tmp_path / "train" / "cats" / "a.png", Image.new("L", (4, 4)))
    save(tmp_path / "train" / "loose.png", Image.new("L", (4, 4)))
    with pytest.raises(DataError, match="loose images such as .*loose.png"):
        get_dataset("folder", "train", root=tmp_path)


def test_folder_modes(tmp_path):
    sixteen = Image.fromarray(np.array([[0, 257 * 100], [65535, 257]], dtype=np.uint16))
    save(tmp_path / "grey" / "train" / "a16.png", sixteen)
    save(tmp_path / "grey" / "train" / "b.png", Image.new("L", (2, 2), 5))
    save(tmp_path / "grey" / "train" / "c.png", Image.new("RGB", (2, 2), (6, 6, 6)))  # grey stored as RGB
    grey = get_dataset("folder", "train", root=tmp_path / "grey")
    assert grey.image_shape == (1, 2, 2)
    assert grey.images[0, 0].tolist() == [[0, 100], [255, 1]] and grey.images[2].eq(6).all()
    save(tmp_path / "grey" / "train" / "d.png", Image.new("RGB", (2, 2), (1, 2, 3)))
    save(tmp_path / "grey" / "train" / "e.png", Image.new("L", (2, 2), 5))  # grey stays the majority
    with pytest.raises(DataError, match="d.png is a colour image but most images .* greyscale"):
        get_dataset("folder", "train", root=tmp_path / "grey")

    palette = Image.new("P", (2, 2))
    palette.putpalette([10, 20, 30] * 256)
    save(tmp_path / "rgb" / "train" / "p.png", palette)
    save(tmp_path / "rgb" / "train" / "q.png", Image.new("RGBA", (2, 2), (1, 2, 3, 0)))
    save(tmp_path / "rgb" / "train" / "r.png", Image.new("L", (2, 2), 9))
    rgb = get_dataset("folder", "train", root=tmp_path / "rgb")
    assert rgb.image_shape == (3, 2, 2)
    assert [rgb.images[i, :, 0, 0].tolist() for i in range(3)] == [[10, 20, 30], [1, 2, 3], [9, 9, 9]]


def test_npz_training_split_is_memory_mapped_and_matches_a_full_read(tmp_path):
    from msflow.data.batches import StepBatches
    from msflow.data.dataset import ShardedImages

    stored, packed = tmp_path / "stored", tmp_path / "packed"
    for k in (1, 2, 3):
        data = write_npz(stored / f"train_data_batch_{k}.npz", 5 + k, 32, first_label=k)
        packed.mkdir(exist_ok=True)
        np.savez_compressed(packed / f"train_data_batch_{k}.npz", data=data, labels=np.arange(k, k + 5 + k))
    mapped, read = get_dataset("imagenet32", "train", root=stored), get_dataset("imagenet32", "train", root=packed)
    assert isinstance(mapped.images, ShardedImages) and isinstance(read.images, torch.Tensor)
    assert len(mapped) == len(read) == 21 and torch.equal(mapped.labels, read.labels)
    idx = torch.tensor([20, 0, 6, 7, 13, 5])  # across all three files, out of order
    assert torch.equal(mapped.images[idx], read.images[idx])
    assert torch.equal(mapped.images[3:9], read.images[3:9]) and torch.equal(mapped.images[-1], read.images[-1])
    for (x, _), (y, _) in zip(StepBatches(mapped, 4, 0).take(0, 6), StepBatches(read, 4, 0).take(0, 6), strict=True):
        assert torch.equal(x, y)
    with pytest.raises(IndexError):
        mapped.images[torch.tensor([21])]
