"""Case loops for users' files: images (one file, and inside folder datasets), MNIST IDX,
CIFAR-10 binary batches, downsampled-ImageNet .npz. Each runs hundreds of seeded cases into a
:class:`Tally`; ``tests/test_fuzz.py`` calls them."""

# Every lambda in a loop here is called by a check within the same iteration: no late binding.
# ruff: noqa: B023

from __future__ import annotations

import gzip
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msflow.analysis.image import load_image
from msflow.data import get_dataset
from msflow.data.cifar import read_cifar_bin
from msflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from msflow.data.npz import load_imagenet_npz

from .checks import Outcome, Tally, cli_error, error_or, user_error
from .formats import EITHER, ERROR, Case, cifar_case, idx_case, npz_case
from .images import bmp_declaring, bomb_sizes, flip_bytes, png_declaring, samples, truncate


def same_pixels(expected: np.ndarray, channels: int) -> Callable[[torch.Tensor], Outcome]:
    """The check that a loaded ``(C, H, W)`` tensor holds ``expected`` (greyscale repeated to RGB,
    RGB turned to greyscale by Pillow's luma)."""
    if expected.shape[2] != channels:
        expected = expected.repeat(3, axis=2) if channels == 3 else np.array(Image.fromarray(expected).convert("L"))
    want = torch.from_numpy(expected.reshape(*expected.shape[:2], channels).astype(np.uint8)).permute(2, 0, 1)
    return lambda x: None if x.dtype == torch.uint8 and torch.equal(x, want) else "wrong pixels or dtype"


def images_in_every_mode(tally: Tally, tmp: Path) -> None:
    """Valid files in every mode load exactly; wrong sizes, truncations and byte flips do not crash."""
    rng, pixels = random.Random(1), np.random.default_rng(1)
    for h, w in [(5, 7), (8, 8), (16, 3)]:
        for s in samples(pixels, h, w):
            path = tmp / f"{h}x{w}-{s.name}"
            path.write_bytes(s.data)
            for c in (1, 3):
                tally.check(
                    f"{path.name} as {c}", error_or(lambda: load_image(path, (c, h, w)), same_pixels(s.pixels, c))
                )
                tally.check(
                    f"{path.name} too big", user_error(lambda: load_image(path, (c, h + 1, w)), path, f"{h}x{w}")
                )
            for i in range(24):
                bad = tmp / f"bad-{i}-{path.name}"
                if i % 2:
                    bad.write_bytes(flip_bytes(s.data, rng))
                    accept = lambda x: None if x.shape == (3, h, w) and x.dtype == torch.uint8 else f"{x.shape}"  # noqa: E731
                else:  # a truncated file may load only if nothing was lost
                    bad.write_bytes(truncate(s.data, rng))
                    accept = same_pixels(s.pixels, 3)
                tally.check(bad.name, error_or(lambda: load_image(bad, (3, h, w)), accept, bad))


def read_in_folder(bad: Path) -> list:
    """``bad`` among four valid 8x8 greyscale images of a folder dataset, both splits read."""
    folder = bad.parent / f"folder-{bad.name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), i).save(folder / f"ok{i}.png")
    shutil.copy(bad, folder / bad.name)
    return [get_dataset("folder", split, root=folder) for split in ("train", "test")]


def non_images_and_bombs(tally: Tally, tmp: Path) -> None:
    """Empty files, random bytes with image names, declared decompression bombs, float pixels."""
    rng = random.Random(2)
    blobs = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff"]
    blobs += [rng.randbytes(rng.randrange(1, 400)) for _ in range(120)]
    for i, blob in enumerate(blobs):
        path = tmp / f"x{i}{rng.choice(['.png', '.jpg', '.jpeg', '.bmp', '.webp'])}"
        path.write_bytes(blob)
        tally.check(path.name, user_error(lambda: load_image(path, (1, 8, 8)), path))
    for i, (w, h) in enumerate(bomb_sizes(rng, Image.MAX_IMAGE_PIXELS)):
        for kind, data in (("png", png_declaring(w, h)), ("bmp", bmp_declaring(w, h))):
            path = tmp / f"bomb{i}.{kind}"
            path.write_bytes(data)
            for shape in ((1, h, w), (3, 8, 8)):  # not even an image of the declared size is decoded
                tally.check(f"{path.name} {shape}", user_error(lambda: load_image(path, shape), path))
            tally.check(f"folder {path.name}", user_error(lambda: read_in_folder(path), path.name))
    floats = tmp / "float.tiff"
    Image.fromarray(np.ones((8, 8), np.float32)).save(floats)
    tally.check("float pixels", user_error(lambda: load_image(floats, (1, 8, 8)), floats, "floating-point"))


def folders_with_a_hostile_file(tally: Tally, tmp: Path) -> None:
    rng, pixels = random.Random(3), np.random.default_rng(3)
    sources = samples(pixels, 8, 8) + samples(pixels, 7, 8)

    def accept(sets: list) -> Outcome:
        return None if all(d.images.dtype == torch.uint8 and d.images.ndim == 4 for d in sets) else "bad dataset"

    for i in range(160):
        s = rng.choice(sources)
        bad = tmp / f"h{i}-{s.name}"
        bad.write_bytes(rng.choice([s.data, truncate(s.data, rng), flip_bytes(s.data, rng), rng.randbytes(50), b""]))
        tally.check(bad.name, error_or(lambda: read_in_folder(bad), accept, bad.name))


def perturb_command(tally: Tally, tmp: Path, run: Path, capsys: pytest.CaptureFixture) -> None:
    """``msflow perturb RUN IMAGE -o OUT --force`` with images it must refuse; OUT stays as it was
    (``--force`` lets the image be judged: the output is replaced only by a result)."""
    rng, pixels = random.Random(4), np.random.default_rng(4)
    out = tmp / "mine.png"
    out.write_bytes(b"the user's own file")
    cases = [("empty.png", b""), ("text.png", b"not an image"), ("bomb.png", png_declaring(20000, 20000))]
    cases += [(f"wrong-size-{s.name}", s.data) for s in samples(pixels, 9, 8)]
    cases += [(f"cut-{s.name}", s.data[: rng.randrange(20)]) for s in samples(pixels, 8, 8)]
    for name, data in cases:
        image = tmp / name
        image.write_bytes(data)
        argv = ["perturb", str(run), str(image), "-o", str(out), "--force"]
        tally.check(f"perturb {name}", cli_error(argv, capsys, image))
        tally.check(f"{name}: output kept", None if out.read_bytes() == b"the user's own file" else "overwritten")


def verdict(case: Case, fn: Callable[[], object], path: Path) -> Outcome:
    """A valid file must give ``case.expected``; a broken one a clear error naming ``path``."""
    if case.verdict == ERROR:
        return user_error(fn, path)
    expected = torch.as_tensor(np.array(case.expected))

    def accept(result: object) -> Outcome:
        got = result if torch.is_tensor(result) else torch.as_tensor(np.array(result))
        return None if got.shape == expected.shape and torch.equal(got, expected) else "wrong array"

    return error_or(fn, accept, path) if case.verdict == EITHER else error_or(fn, accept)


def idx_files(tally: Tally, tmp: Path) -> None:
    rng = random.Random(5)
    for i in range(900):
        magic = rng.choice([IMAGES_MAGIC, LABELS_MAGIC])
        case = idx_case(rng, magic)
        gz = case.kind.startswith("gz") or rng.random() < 0.3
        path = tmp / f"{i}-{case.kind}-idx{magic & 0xFF}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(case.data if case.kind.startswith("gz") or not gz else gzip.compress(case.data))
        tally.check(path.name, verdict(case, lambda: read_idx(path, magic), path))


def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return b"".join(n.to_bytes(4, "big") for n in (magic, *dims)) + body


def mnist_folders(tally: Tally, tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """A hostile file among the four MNIST files, through ``get_dataset`` and ``msflow bound``."""
    rng = random.Random(6)
    hostile = [("t10k-images-idx3-ubyte", _idx(IMAGES_MAGIC, (0, 28, 28), b""))]
    while len(hostile) < 60:
        name = rng.choice(["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"])
        case = idx_case(rng, IMAGES_MAGIC if "images" in name else LABELS_MAGIC)
        if case.verdict == ERROR:
            hostile.append((name, case.data))
    for i, (name, data) in enumerate(hostile):
        root = tmp / f"mnist{i}"
        root.mkdir()
        for split in ("train", "t10k"):
            (root / f"{split}-images-idx3-ubyte").write_bytes(_idx(IMAGES_MAGIC, (3, 28, 28), rng.randbytes(3 * 784)))
            (root / f"{split}-labels-idx1-ubyte").write_bytes(_idx(LABELS_MAGIC, (3,), bytes([1, 2, 3])))
        (root / name).write_bytes(data)
        split = "train" if name.startswith("train") else "test"
        tally.check(f"mnist {name} #{i}", user_error(lambda: get_dataset("mnist", split, root=root), root / name))
        if i < 30:
            argv = ["bound", "mnist", "--root", str(root)]
            tally.check(f"msflow bound mnist #{i}", cli_error(argv, capsys, root / name))


def cifar_batches(tally: Tally, tmp: Path, capsys: pytest.CaptureFixture) -> None:
    rng = random.Random(7)
    for i in range(500):
        case = cifar_case(rng)
        path = tmp / f"{i}-{case.kind}.bin"
        path.write_bytes(case.data)
        if case.verdict == ERROR:
            tally.check(path.name, user_error(lambda: read_cifar_bin(path), path))
        else:
            images, labels = read_cifar_bin(path)
            records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(labels), -1)], axis=1)
            tally.check(path.name, None if np.array_equal(records, case.expected) else "wrong records")
        if case.verdict == ERROR and i < 200:
            root = tmp / f"root{i}"
            root.mkdir()
            for b in range(1, 6):
                (root / f"data_batch_{b}.bin").write_bytes(bytes([b]) + rng.randbytes(3072))
            shutil.copy(path, root / "test_batch.bin")
            bad = root / "test_batch.bin"
            tally.check(f"cifar10 {path.name}", user_error(lambda: get_dataset("cifar10", "test", root=root), bad))
            if i < 60:
                tally.check(
                    f"msflow bound {path.name}", cli_error(["bound", "cifar10", "--root", str(root)], capsys, bad)
                )


def imagenet_npz(tally: Tally, tmp: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    rng = random.Random(8)
    for i in range(450):
        case = npz_case(rng, marker)
        root = tmp / f"{i}-{case.kind}"
        root.mkdir()
        path = root / "val_data.npz"
        path.write_bytes(case.data)
        tally.check(root.name, verdict(case, lambda: load_imagenet_npz(root, "test", 32).images, path))
        if case.verdict == ERROR and i < 120:
            np.savez(root / "train_data_batch_1.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([1, 2]))
            tally.check(
                f"msflow bound {root.name}", cli_error(["bound", "imagenet32", "--root", str(root)], capsys, path)
            )
        tally.check(f"{root.name}: nothing unpickled", "unpickled" if marker.exists() else None)
