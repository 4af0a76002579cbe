"""Latent perturbation by level (paper 004, Figure 5): the function and the ``msflow perturb`` command."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY
from torch import Tensor, nn

from msflow import create_model
from msflow.analysis import load_image, mix_levels, perturb_levels
from msflow.cli import main
from msflow.data import get_dataset
from msflow.errors import DataError, ShapeError
from msflow.runs import load_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LEVELS = 2  # glow-mnist


@pytest.fixture(scope="module")
def digits() -> Tensor:
    """Eight real 1x8x8 uint8 digits."""
    return get_dataset("digits8", "test").images[:8]


@pytest.fixture(scope="module")
def model(randomize: Callable[..., nn.Module]) -> nn.Module:
    """A tiny 2-level Glow on 8x8 digits, ActNorm initialised on data, then randomised (not an identity)."""
    model = create_model("glow-mnist", image_shape=(1, 8, 8), hidden=8, steps=1)
    with torch.no_grad():
        model.bits_per_dim(get_dataset("digits8", "train").images[:256], generator=torch.Generator().manual_seed(0))
    return randomize(model, std=0.1, seed=1).eval()


def as_figure(images: Tensor, batch: int) -> Tensor:
    """``(B, 2 rows, L + 1 columns, C, H, W)`` view of the flat result."""
    return images.reshape(batch, 2, LEVELS + 1, *images.shape[1:])


def centre_latents(model: nn.Module, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return model.encode((x.float() + 0.5) / 256)[0]


# ----------------------------------------------------------------------------- the function


def test_keeping_every_level_reconstructs_the_image_exactly(model: nn.Module, digits: Tensor) -> None:
    images = perturb_levels(model, digits, generator=torch.Generator().manual_seed(0))
    assert images.shape == (len(digits) * 2 * (LEVELS + 1), 1, 8, 8) and images.dtype == torch.uint8
    fig = as_figure(images, len(digits))
    assert torch.equal(fig[:, 0, 0], digits) and torch.equal(fig[:, 1, 0], digits)  # originals in column 0
    assert torch.equal(fig[:, 0, LEVELS], digits)  # k = L keeps everything: exact reconstruction


def test_latents_are_those_of_the_bin_centres(model: nn.Module, digits: Tensor) -> None:
    v = (digits.float() + 0.5) / 256
    assert torch.equal(model.dequantizer.quantize(v), digits)
    zs = centre_latents(model, digits)
    assert torch.equal(model.dequantizer.quantize(model.decode(zs)), digits)


def test_kept_levels_are_bitwise_the_latents_and_resampled_ones_change_the_image(
    model: nn.Module, digits: Tensor
) -> None:
    images = as_figure(perturb_levels(model, digits, 1.0, torch.Generator().manual_seed(5)), len(digits))
    zs = centre_latents(model, digits)
    noise = model.sample_latents(len(digits), 1.0, torch.Generator().manual_seed(5))
    for k in range(1, LEVELS + 1):
        keep, resample = mix_levels(zs, noise, k)
        for i in range(LEVELS):
            assert (keep[i] is zs[i]) == (i < k) and (keep[i] is noise[i]) == (i >= k)
            assert (resample[i] is noise[i]) == (i < k) and (resample[i] is zs[i]) == (i >= k)
        # The figure is exactly the decoding of these latents.
        for row, latents in enumerate((keep, resample)):
            with torch.no_grad():
                expected = model.dequantizer.quantize(model.decode(latents))
            assert torch.equal(images[:, row, k], expected)
    for b in range(len(digits)):
        assert not torch.equal(images[b, 0, 1], digits[b])  # coarse level resampled
        assert not torch.equal(images[b, 1, 1], digits[b])  # fine level resampled
        assert not torch.equal(images[b, 1, LEVELS], digits[b])  # everything resampled


def test_temperature_zero_is_deterministic(model: nn.Module, digits: Tensor) -> None:
    runs = [perturb_levels(model, digits, 0.0, g) for g in (torch.Generator().manual_seed(1), None)]
    runs.append(perturb_levels(model, digits, 0.0, torch.Generator().manual_seed(2)))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    zeros = [torch.zeros(len(digits), *s) for s in model.latent_shapes()]
    with torch.no_grad():
        mode = model.dequantizer.quantize(model.decode(zeros))
    assert torch.equal(as_figure(runs[0], len(digits))[:, 1, LEVELS], mode)
    # ...while at temperature 1 the seed matters, so the check above is not vacuous.
    hot = [perturb_levels(model, digits, 1.0, torch.Generator().manual_seed(s)) for s in (1, 2)]
    assert not torch.equal(hot[0], hot[1])


def test_one_image_and_float64_model(model: nn.Module, digits: Tensor) -> None:
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    one = perturb_levels(model, digits[0], 0.5, gen())
    assert torch.equal(one, perturb_levels(model, digits[:1], 0.5, gen()))
    double = create_model("glow-mnist", image_shape=(1, 8, 8), hidden=8, steps=1)
    double.load_state_dict(model.state_dict())
    double = double.double()
    assert torch.equal(as_figure(perturb_levels(double, digits), 8)[:, 0, LEVELS], digits)


def test_bad_inputs_raise_user_errors(model: nn.Module, digits: Tensor) -> None:
    with pytest.raises(DataError, match="integer pixel values"):
        perturb_levels(model, digits.float() / 255)
    with pytest.raises(ShapeError):
        perturb_levels(model, torch.zeros(1, 1, 8, 6, dtype=torch.uint8))
    with pytest.raises(ValueError, match="0 <= k <= 2"):
        mix_levels([torch.zeros(1)] * 2, [torch.ones(1)] * 2, 3)


def test_load_image_converts_channels_and_refuses_other_sizes(tmp_path: Path) -> None:
    Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)).save(tmp_path / "rgb.png")
    assert load_image(tmp_path / "rgb.png", (1, 1, 2)).tolist() == [[[76, 29]]]  # ITU-R 601 luma
    Image.fromarray(np.array([[10, 20]], dtype=np.uint8)).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png", (3, 1, 2)).tolist() == [[[10, 20]]] * 3
    with pytest.raises(ShapeError, match="resize or crop the image to 2x1"):
        load_image(tmp_path / "grey.png", (1, 2, 1))


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run (Glow on 8x8 digits) trained by the real command."""
    folder = tmp_path_factory.mktemp("perturb") / "run"
    cmd = [sys.executable, "-m", "msflow.cli", "train", "mnist5k-glow", *TINY, "train.steps=2", "--out", str(folder)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture
def digit_png(digits: Tensor, tmp_path: Path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(digits[0, 0].numpy()).save(path)
    return path


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


def assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msflow perturb: error: "), err
    for needle in needles:
        assert needle in lines[0], err


def test_perturb_command_writes_the_figure(run: Path, digit_png: Path, digits: Tensor, tmp_path: Path) -> None:
    out = tmp_path / "fig" / "perturb.png"
    cmd = [sys.executable, "-m", "msflow.cli", "perturb", str(run), str(digit_png), "-o", str(out), "-t", "0.8"]
    proc = subprocess.run([*cmd, "--seed", "4"], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"to {out}" in proc.stdout and "2 levels, temperature 0.8" in proc.stdout
    scale = 96 // 8
    grid = np.array(Image.open(out))
    assert grid.shape == ((2 * 10 + 2) * scale, (3 * 10 + 2) * scale)  # 2 rows x (L + 1) columns, 2 px padding
    tiles = torch.from_numpy(grid[::scale, ::scale].copy())
    model = load_run(run)[0]
    expected = perturb_levels(model, digits[0], 0.8, torch.Generator().manual_seed(4))
    for i, image in enumerate(expected):
        r, c = divmod(i, LEVELS + 1)
        assert torch.equal(tiles[2 + r * 10 : 10 + r * 10, 2 + c * 10 : 10 + c * 10], image[0])


def test_rgb_image_is_converted_for_a_grey_model(
    run: Path, digit_png: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rgb = tmp_path / "rgb.png"
    Image.open(digit_png).convert("RGB").save(rgb)
    for name, image in (("a.png", digit_png), ("b.png", rgb)):
        rc, _, err = call_main(["perturb", str(run), str(image), "-o", str(tmp_path / name), "--device", "cpu"], capsys)
        assert rc == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("missing", ["no image file at", "missing.png"]),
        ("size", ["is 8x10 (height x width)", "resize or crop the image to 8x8"]),
        ("corrupt", ["cannot read image"]),
        ("run", ["no run folder or checkpoint"]),
    ],
)
def test_bad_inputs_are_one_line_errors(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str, needles: list[str]
) -> None:
    image = tmp_path / ("missing.png" if kind == "missing" else "image.png")
    if kind == "size":
        Image.new("L", (10, 8)).save(image)
    elif kind == "corrupt":
        image.write_bytes(b"\x89PNG not really")
    elif kind == "run":
        Image.new("L", (8, 8)).save(image)
    out = tmp_path / "out.png"
    rc, _, err = call_main(
        ["perturb", str(tmp_path / "none" if kind == "run" else run), str(image), "-o", str(out)], capsys
    )
    assert_user_error(rc, err, *needles)
    assert not out.exists()


def test_bad_size_from_the_real_command(run: Path, tmp_path: Path) -> None:
    Image.new("RGB", (8, 12)).save(tmp_path / "tall.png")
    cmd = [sys.executable, "-m", "msflow.cli", "perturb", str(run), str(tmp_path / "tall.png")]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "is 12x8", "to 8x8")
    assert proc.stdout == "" and not (tmp_path / "perturb.png").exists()
