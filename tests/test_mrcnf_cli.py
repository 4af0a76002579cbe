"""MRCNF through the training loop and the command line: one level per run, `msflow assemble`,
`msflow superres`, `msflow eval` of a continuous flow, and RNODE/NFE logging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY

from msflow.cli import main
from msflow.data import get_dataset
from msflow.runs import load_run
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.level_curves import LEVEL_PLOT, level_curves
from msflow.train.recipe import build_model
from runs import read_metrics

FAST_SOLVER = "{train: {method: rk4, step_size: 0.5}, eval: {method: rk4, step_size: 0.25}}"
OPTIONS = f"model.options={{image_shape: [1, 8, 8], resolutions: 2, steps: 1, hidden: 8, solver: {FAST_SOLVER}}}"
MRCNF = ["mnist5k-mrcnf", *TINY, OPTIONS, "train.steps=3", "train.max_seconds=0", "train.log_every=1"]
MRCNF += ["train.objective=likelihood"]  # the paper's objective (the config trains by flow matching)


def train_level(folder: Path, level: int | None) -> Path:
    out = folder / f"level{level}"
    extra = [] if level is None else [f"train.level={level}"]
    assert main(["train", *MRCNF, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def levels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("levels")
    return [train_level(folder, 0), train_level(folder, 1)]


def test_a_level_run_trains_only_its_level_and_logs_rnode_and_nfe(levels: list[Path]) -> None:
    for s, run in enumerate(levels):
        records = [r for r in read_metrics(run) if "loss_bpd" in r]
        assert len(records) == 3 and all(r["nfe"] > 0 and r["reg"] >= 0 for r in records)
        tensors, meta = load_checkpoint(run / CHECKPOINT)
        assert meta["config"]["train"]["level"] == s
        _, cfg, _ = load_run(run)
        fresh = build_model(cfg, torch.device("cpu")).state_dict()  # the same seed: the initial weights
        for key, initial in fresh.items():
            trained = tensors[f"model/{key}"]
            if key.startswith(f"levels.{1 - s}."):
                assert torch.equal(trained, initial), f"level {s}'s run changed {key}"
        changed = [
            k for k, v in fresh.items() if k.startswith(f"levels.{s}.") and not torch.equal(tensors[f"model/{k}"], v)
        ]
        assert changed, f"level {s}'s run did not train its level"


def test_assembled_bits_per_dim_is_the_sum_of_the_level_terms(levels: list[Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "assembled"
    assert main(["assemble", *map(str, levels), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    level_bpd = [float(line.split(":")[1].split()[0]) for line in text.splitlines() if line.strip().startswith("level")]
    total = float(text.split("test bits/dim: ")[1].split()[0])
    parts = float(text.split("sum of the level terms: ")[1].split()[0])
    assert total == pytest.approx(parts, abs=2e-6)
    # each level term is the one its own run measured at the end of training
    for s, run in enumerate(levels):
        assert level_bpd[s] == pytest.approx(json.loads((run / "results.json").read_text())["bpd"], abs=2e-6)
    model, cfg, meta = load_run(out)
    assert cfg.train.level is None and set(meta["assembled_from"]) == {"0", "1"}
    # Figure 5b: each level's training curve comes from the run that trained it.
    assert (out / LEVEL_PLOT).is_file()
    curves = level_curves(levels)
    for s, run in enumerate(levels):
        logged = [(r["step"], r["loss_bpd"]) for r in read_metrics(run) if "loss_bpd" in r]
        assert curves["train bits/dim"][s] == logged
        assert [v for _, v in curves["test bits/dim"][s]] == [pytest.approx(level_bpd[s], abs=2e-6)]
    for s, run in enumerate(levels):  # level s's weights are the EMA weights of the run that trained it
        source, _ = load_checkpoint(run / CHECKPOINT)
        for key, value in model.state_dict().items():
            if key.startswith(f"levels.{s}."):
                assert (value == source[f"ema/{key}"]).all()


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ([0], "the runs cover levels [0]"),
        ([0, 0], "level 0 comes from both"),
    ],
)
def test_assemble_refuses_incomplete_or_repeated_levels(
    levels: list[Path], tmp_path: Path, capsys, which, message
) -> None:  # noqa: ANN001, E501
    out = tmp_path / "never"
    assert main(["assemble", *(str(levels[i]) for i in which), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("msflow assemble: error:") and message in line
    assert not (out / CHECKPOINT).exists()


def test_assemble_refuses_a_run_of_every_level(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    whole = train_level(tmp_path, None)
    assert main(["assemble", str(whole), "--out", str(tmp_path / "x")]) == 2
    assert "level runs it is attached to" in capsys.readouterr().err


def test_level_option_needs_a_multiresolution_model(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=1", "train.level=0", "--out", str(tmp_path / "g")]) == 2
    assert "train.level=0 needs a multi-resolution model" in capsys.readouterr().err


def test_superres_and_eval_of_a_continuous_flow(levels: list[Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "assembled"
    assert main(["assemble", *map(str, levels), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--check-images", "50"]) == 0  # the CNF trace needs autograd in evaluation
    assert "invertibility" in capsys.readouterr().out
    coarse = get_dataset("digits8", "test").images[0, 0].numpy()[::2, ::2]  # a 4x4 image
    Image.fromarray(coarse).save(tmp_path / "c.png")
    grid_path = tmp_path / "sr.png"
    result = tmp_path / "up.png"
    args = ["superres", str(out), str(tmp_path / "c.png"), "-n", "3", "-o", str(result), "--panel", str(grid_path)]
    assert main(args) == 0
    assert Image.open(result).size == (8, 8)  # -o: sample 1 itself
    grid = np.asarray(Image.open(grid_path))
    scale = 96 // 8
    assert grid.shape == ((8 + 2 + 2) * scale, (5 * 10 + 2) * scale)  # input, bicubic, 3 samples in one row
    assert np.array_equal(grid[2 * scale : 10 * scale : 2 * scale, 2 * scale : 10 * scale : 2 * scale], coarse)
    capsys.readouterr()
    assert main(["superres", str(out), str(tmp_path / "c.png"), "--scale", "4"]) == 2
    assert "can super-resolve up to x2, not x4" in capsys.readouterr().err
    # A bundled held-out photo of any size, as the ground truth: reduced, refined and scored.
    args = ["superres", str(out), "chelsea", "--hr", "-n", "2", "-o", str(tmp_path / "up.png"), "--force"]
    assert main([*args, "--panel", str(tmp_path / "cat.png")]) == 0
    text = capsys.readouterr().out
    assert "300x450 ground truth reduced to 150x225" in text
    rows = {
        line.split()[0] + line.split()[1]: line.split()[-2:] for line in text.splitlines() if line.startswith("sample ")
    }
    assert set(rows) == {"sample1", "sample2"} and all(0 < float(p) < 60 for p, _ in rows.values()), text
    bicubic = [line.split() for line in text.splitlines() if line.startswith("bicubic")]
    assert len(bicubic) == 1 and float(bicubic[0][1]) > 25, text  # x2 bicubic of a photo: about 30 dB
    assert Image.open(tmp_path / "cat.png").size == (5 * 452 + 2, 304)  # 300x450 panels, 2-pixel padding


def test_interpolate_refuses_a_multiresolution_model_in_one_line(levels: list[Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "assembled"
    assert main(["assemble", *map(str, levels), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["interpolate", str(out), "--test-pairs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds a MultiResolutionFlow" in err and "split priors" in err and len(err.strip().splitlines()) == 1
