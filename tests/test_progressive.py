"""MRCNF progressive training (paper 000, section 5): a finer level trained later is attached to a
whole coarser model (`msflow assemble LEVEL_RUN COARSE_RUN`), and `data.downsample` makes the
coarser model's data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import TINY

from msflow.cli import main
from msflow.data import get_dataset
from msflow.errors import DataError
from msflow.runs import load_run
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint

SOLVER = "{train: {method: rk4, step_size: 0.5}, eval: {method: rk4, step_size: 0.25}}"


def options(side: int, resolutions: int, **extra: object) -> str:
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return (
        f"model.options={{image_shape: [1, {side}, {side}], resolutions: {resolutions}, steps: 1, hidden: 8, "
        f"solver: {SOLVER}{more}}}"
    )


def train(out: Path, *extra: str) -> Path:
    args = ["mnist5k-mrcnf", *TINY, "train.steps=2", "train.max_seconds=0", "train.num_samples=0"]
    args += ["train.objective=likelihood", *extra]
    assert main(["train", *args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("progressive")
    coarse = train(folder / "coarse", options(4, 1), "data.downsample=2")  # a whole 4x4 model
    fine = train(folder / "fine", options(8, 2), "train.level=0")  # only the 8x8 details, trained later
    out = folder / "grown"
    assert main(["assemble", str(fine), str(coarse), "--out", str(out)]) == 0
    return {"coarse": coarse, "fine": fine, "grown": out}


def test_downsampled_data_averages_blocks() -> None:
    full, half = get_dataset("digits8", "test"), get_dataset("digits8", "test", downsample=2)
    assert half.image_shape == (1, 4, 4)
    expected = F.avg_pool2d(full.images.double(), 2).round().to(torch.uint8)
    assert torch.equal(half.images, expected)
    with pytest.raises(DataError, match="divides both sides"):
        get_dataset("digits8", "test", downsample=3)


def test_the_coarse_model_becomes_the_top_levels_of_the_grown_one(grown: dict[str, Path]) -> None:
    model, cfg, meta = load_run(grown["grown"])
    coarse, _, _ = load_run(grown["coarse"])
    assert model.num_resolutions == 2 and cfg.train.level is None
    assert meta["assembled_from"] == {"0": str(grown["fine"] / CHECKPOINT), "1": str(grown["coarse"] / CHECKPOINT)}
    source, _ = load_checkpoint(grown["coarse"] / CHECKPOINT)
    tops = {k: v for k, v in model.state_dict().items() if k.startswith("levels.1.")}
    assert tops and all(torch.equal(v, source["ema/levels.0." + k[len("levels.1.") :]]) for k, v in tops.items())
    # The grown model's top term is exactly the coarse model's density of the 2x2 averages.
    v = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        top = model.level_log_probs_continuous(v, [1])[0]
        expected = coarse.log_prob_continuous(F.avg_pool2d(v, 2))
    assert torch.allclose(top, expected, atol=1e-5)


def test_a_coarse_model_of_the_wrong_size_or_noise_is_refused(grown: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    wrong_size = train(tmp_path / "wrong", options(8, 1))  # 8x8, not 4x4
    assert main(["assemble", str(grown["fine"]), str(wrong_size), "--out", str(tmp_path / "a")]) == 2
    assert "needs 1x4x4 images (data.downsample)" in capsys.readouterr().err
    noisy = train(tmp_path / "noisy", options(4, 1, multires_noise="true"), "data.downsample=2")
    fine_noisy = train(tmp_path / "fine_noisy", options(8, 2, multires_noise="true"), "train.level=0")
    assert main(["assemble", str(fine_noisy), str(noisy), "--out", str(tmp_path / "b")]) == 2
    assert "multires_noise=false" in capsys.readouterr().err
    assert main(["assemble", str(grown["coarse"]), "--out", str(tmp_path / "c")]) == 2
    assert "level runs it is attached to" in capsys.readouterr().err
    assert (
        main(["assemble", str(grown["fine"]), str(grown["coarse"]), str(grown["coarse"]), "--out", str(tmp_path / "d")])
        == 2
    )
    assert "at most one run of a whole" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcd")
