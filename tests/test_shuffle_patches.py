"""Shuffled patches: the permutation itself, the bits/dim experiment and `msflow shuffle-patches`."""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny import TINY

from msflow.analysis.shuffle_patches import shuffle_patch_bpd, shuffle_patch_table
from msflow.cli import main
from msflow.data import ImageDataset, get_dataset
from msflow.data.ood_sets import check_patch_sizes, patch_sizes, shuffle_patches, subset
from msflow.errors import ShapeError
from msflow.runs import load_run
from msflow.train.evaluate import dataset_bits_per_dim

ROW = re.compile(r"^\| (\d+)x\1 \| (\d+) \| (\d+\.\d{4}) \+- (\d+\.\d{4}) \|$", re.M)


def call_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    except Exception:  # noqa: BLE001 - a crash is what these tests look for
        rc = 1
        traceback.print_exc()
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Glow on 8x8 digits, trained for 3 steps by the real command."""
    run = tmp_path_factory.mktemp("patches") / "run"
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=3", "--out", str(run)]) == 0
    return run


def _blocks(x: torch.Tensor, k: int) -> list[list[tuple]]:
    """Per image, the sorted list of its k x k blocks (each as a tuple of values)."""
    n, c, h, w = x.shape
    b = x.reshape(n, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * k * k)
    return [sorted(map(tuple, img.tolist())) for img in b]


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_shuffle_patches_permutes_whole_patches(k: int) -> None:
    x = torch.arange(4 * 2 * 6 * 12).reshape(4, 2, 6, 12)  # every value unique: positions are traceable
    y = shuffle_patches(x, k, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert _blocks(y, k) == _blocks(x, k)  # the same patches, intact, channels together
    if k < 6:
        assert not torch.equal(y, x)


def test_shuffle_patches_identity_seeding_and_independence() -> None:
    x = get_dataset("digits8", "test").images[:1].repeat(50, 1, 1, 1)
    assert torch.equal(shuffle_patches(x, 8), x)
    a = shuffle_patches(x, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a, shuffle_patches(x, 2, torch.Generator().manual_seed(5)))
    assert len({tuple(img.flatten().tolist()) for img in a}) > 45  # one permutation per image


def test_patch_sizes_and_errors() -> None:
    assert patch_sizes(28, 28) == [1, 2, 4, 7, 14, 28]
    assert patch_sizes(8, 12) == [1, 2, 4]
    check_patch_sizes([1, 7, 28], 28, 28)
    with pytest.raises(
        ShapeError, match=r"patch size 5 does not divide the 28x28 images; choose from 1, 2, 4, 7, 14, 28"
    ):
        check_patch_sizes([2, 5], 28, 28)


def test_shuffle_patch_bpd_with_a_stand_in_model() -> None:
    # bits/dim of a stand-in model: mean absolute difference of horizontal neighbours
    bpd_fn = lambda x: (x[..., 1:].double() - x[..., :-1].double()).abs().mean((1, 2, 3)) / 32  # noqa: E731
    images = get_dataset("digits8", "test").images[:100]
    rows = shuffle_patch_bpd(bpd_fn, images, [8, 1, 4, 2, 4])
    assert [r.k for r in rows] == [1, 2, 4, 8]
    assert rows[-1].bpd == pytest.approx(bpd_fn(images).mean().item())
    assert rows[0].bpd > rows[-1].bpd  # pixel shuffling destroys smoothness
    assert all(r.n == 100 and r.example.shape == (1, 8, 8) for r in rows)
    assert [int(m[1]) for m in ROW.findall(shuffle_patch_table(rows))] == [64, 16, 4, 1]


def test_shuffle_patches_command(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png, out_json = tmp_path / "p.png", tmp_path / "p.json"
    argv = ["shuffle-patches", str(tiny_run), "--n", "40", "-o", str(png), "--json", str(out_json)]
    rc, out, err = call_main(argv, capsys)
    assert rc == 0, err
    rows = ROW.findall(out)
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8]  # default: every divisor of the side
    with Image.open(png) as image:
        assert image.format == "PNG"
    data = json.loads(out_json.read_text())
    assert [r["k"] for r in data["rows"]] == [1, 2, 4, 8]
    # k = 8 is the unshuffled test subset, scored by `msflow eval`'s evaluation code
    model, cfg, _ = load_run(tiny_run)
    test = subset(get_dataset("digits8", "test").images, 40, 0)
    expected = dataset_bits_per_dim(model, ImageDataset(test), cfg.train.eval_batch_size, seed=0).mean().item()
    assert data["rows"][-1]["bpd"] == pytest.approx(expected, abs=1e-9)
    assert float(rows[-1][2]) == pytest.approx(expected, abs=1e-4)

    rc, out, err = call_main(["shuffle-patches", str(tiny_run), "--k", "2", "4", "-o", str(png), "--force"], capsys)
    assert rc == 0, err
    assert [int(r[0]) for r in ROW.findall(out)] == [2, 4]


def test_shuffle_patches_bad_k(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "p.png"
    rc, _, err = call_main(["shuffle-patches", str(tiny_run), "--k", "2", "3", "-o", str(png)], capsys)
    assert "Traceback" not in err and rc == 2
    lines = err.strip().splitlines()
    assert lines == [
        "msflow shuffle-patches: error: patch size 3 does not divide the 8x8 images; choose from 1, 2, 4, 8"
    ]
    assert not png.exists()
    rc, _, err = call_main(["shuffle-patches", str(tiny_run), "--k", "0"], capsys)
    assert rc == 2 and "positive integer" in err and "Traceback" not in err
