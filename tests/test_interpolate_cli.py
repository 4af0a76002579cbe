"""`msflow interpolate` on a tiny trained mAR-SCF run: grid, table, JSON, and input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import TINY

from msflow.cli import main
from msflow.data import get_dataset

MARSCF_TINY = [
    *TINY,
    "model.options.levels=2",
    "model.options.steps=1",
    "model.options.lstm_hidden=4",
    "train.steps=3",
    "train.max_seconds=0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("marscf") / "run"
    assert main(["train", "mnist5k-marscf-mar-affine", *MARSCF_TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("pngs")
    test = get_dataset("digits8", "test").images
    paths = []
    for i in (0, 1):
        path = folder / f"{i}.png"
        Image.fromarray(test[i, 0].numpy()).save(path)
        paths.append(str(path))
    return paths


def test_interpolate_two_images_writes_the_grid_and_the_table(
    run: Path, pngs: list[str], tmp_path: Path, capsys
) -> None:  # noqa: ANN001, E501
    out = tmp_path / "path.png"
    assert main(["interpolate", str(run), *pngs, "--steps", "5", "--iters", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{pngs[0]} -> {pngs[1]}"[-40:] in text and f"wrote the first pair's paths to {out}" in text
    grid = np.asarray(Image.open(out))
    scale = 64 // 8
    assert grid.shape == ((2 * 10 + 2) * scale, (5 * 10 + 2) * scale)  # 2 rows (linear, optimised) of 5, pad 2

    def cell(row: int, col: int) -> np.ndarray:
        top, left = (2 + row * 10) * scale, (2 + col * 10) * scale
        return grid[top : top + 8 * scale : scale, left : left + 8 * scale : scale]

    # both paths share their end images
    assert np.array_equal(cell(0, 0), cell(1, 0)) and np.array_equal(cell(0, 4), cell(1, 4))
    assert not np.array_equal(cell(0, 0), cell(0, 4))


def test_interpolate_test_pairs_reports_the_mean_and_json(run: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out, js = tmp_path / "p.png", tmp_path / "p.json"
    argv = ["interpolate", str(run), "--test-pairs", "2", "--steps", "4", "--iters", "3", "-o", str(out)]
    assert main([*argv, "--json", str(js)]) == 0
    assert "mean over 2 pairs" in capsys.readouterr().out
    data = json.loads(js.read_text())
    assert len(data["pairs"]) == 2 and out.is_file()
    for pair in data["pairs"]:
        assert pair["objective_best"] <= pair["objective_start"]  # the best iterate is kept
        assert pair["mean_interior_latent_bpd_optimised"] <= pair["mean_interior_latent_bpd_linear"] + 1e-6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-pairs", "0"], "give two images"),
        (["--steps", "2", "--test-pairs", "1"], "--steps counts both end images"),
        (["--test-pairs", "1000"], "needs 2000 test images"),
        (["--lambdas", "nan", "0.3", "--test-pairs", "1"], "--lambdas must be two finite numbers"),
    ],
)
def test_interpolate_input_errors_are_one_line(
    run: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:  # noqa: ANN001, E501
    out = tmp_path / "never.png"
    assert main(["interpolate", str(run), *extra, "-o", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("msflow interpolate: error:") and message in line
    assert not out.exists()


def test_interpolate_refuses_one_image(run: Path, pngs: list[str], capsys) -> None:  # noqa: ANN001
    assert main(["interpolate", str(run), pngs[0]]) == 2
    assert "give two images" in capsys.readouterr().err
