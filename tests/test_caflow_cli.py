"""CAFLOW inference (paper 002, section 4.4) through the library and the command line: best N of M
by conditional likelihood, conditions made from a user's image, `colorize`, `inpaint`,
`translate`, `superres --best-of`, `translate-table`, and the refusals.

Tiny runs go through the real `msflow train` (two steps; the final test evaluation is most
of their time), once per module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msflow import create_model
from msflow.analysis.translate import best_of, prepare_condition
from msflow.cli import main
from msflow.data.pairs import downscale_bicubic
from msflow.data.translation import central_mask, sketch_edges, to_grey
from msflow.errors import ConfigError, ShapeError
from msflow.runs import load_run

COMMON = [
    "train.steps=2",
    "train.max_seconds=0",
    "train.batch_size=4",
    "train.progress=false",
    "train.device=cpu",
    "train.precision=float32",
    "train.num_samples=1",
    "optim.warmup_steps=1",
]
# dotted, so that each config keeps its own factorization
TINY = {"size": 32, "levels": 3, "hidden": 8, "cond_hidden": 8, "cond_steps": 1, "target_steps": 1, "flow_steps": 1}
OPTIONS = [f"model.options.{k}={v}" for k, v in {**TINY, "transitions": 1}.items()]
CONFIGS = {
    "colorize": "photos-colorize-caflow",
    "dual-glow": "photos-colorize-caflow-dualglow",
    "inpaint": "photos-inpaint-caflow",
    "sketch": "photos-sketch-caflow",
    "superres": "photos-sr4-caflow",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("caflow")
    for name, config in CONFIGS.items():
        assert main(["train", config, *COMMON, *OPTIONS, "--out", str(folder / name)]) == 0
    return {name: folder / name for name in CONFIGS}


def tiny(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(preset, **{**TINY, "size": 16, "levels": 2}).eval()


def picture(w: int, h: int) -> torch.Tensor:
    """A uint8 RGB ``(3, h, w)`` picture: two colour ramps and a vertical edge."""
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), 255 * (x > w // 2)]).to(torch.uint8)


def photo(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    """:func:`picture` of ``size`` (width, height) saved in ``mode``."""
    Image.fromarray(picture(*size).permute(1, 2, 0).numpy()).convert(mode).save(path)
    return path


# ---- library --------------------------------------------------------------------------------


def test_best_of_keeps_the_lowest_bits_per_dim_in_order(runs: dict[str, Path]) -> None:
    model, _, _ = load_run(runs["colorize"])
    cond = torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    kept, bpd = best_of(model, cond, 3, 6, 0.85, torch.Generator().manual_seed(1), score_seed=5)
    every, all_bpd = best_of(model, cond, 6, 6, 0.85, torch.Generator().manual_seed(1), score_seed=5)
    assert kept.shape == (3, 3, 32, 32) and kept.dtype == torch.uint8
    assert torch.all(bpd[:-1] <= bpd[1:])  # best (lowest bits/dim) first
    assert torch.equal(kept, every[:3]) and torch.equal(bpd, all_bpd[:3])
    with torch.no_grad():  # the reported scores are the model's, with one shared noise image
        again = model.bits_per_dim(kept, cond.expand(3, -1, -1, -1), torch.Generator().manual_seed(5), same_noise=True)
    torch.testing.assert_close(again.double(), bpd, atol=1e-4, rtol=0)
    # any size: padded to the model's multiple, cropped back
    odd, _ = best_of(model, cond[..., :13, :21], 2, 3, 0.85)
    assert odd.shape == (2, 3, 13, 21)
    with pytest.raises(ValueError, match="1 <= n <= m, got n=4, m=3"):
        best_of(model, cond, 4, 3, 0.85)


def test_best_of_super_resolves_an_input_of_any_size() -> None:
    model = tiny("caflow-sr4")  # 16x16 targets from 4x4: LR sides must divide by 1
    low = torch.randint(0, 256, (1, 3, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    samples, _ = best_of(model, low, 2, 3, 0.5)
    assert samples.shape == (2, 3, 20, 12)


def test_prepare_condition_for_each_task() -> None:
    image = torch.randint(0, 256, (3, 12, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    colorize = tiny("caflow-colorize")
    grey, truth = prepare_condition(colorize, image)
    assert torch.equal(grey, to_grey(image[None])[0]) and truth is image
    cond, truth = prepare_condition(colorize, grey)
    assert cond is grey and truth is None

    inpaint = tiny("caflow-inpaint")
    masked, truth = prepare_condition(inpaint, image)
    hidden = central_mask(12, 20)
    assert truth is image and (masked[:, hidden] == 0).all() and torch.equal(masked[:, ~hidden], image[:, ~hidden])
    corner = torch.zeros(12, 20, dtype=torch.int64)
    corner[:4, :5] = 1
    masked, _ = prepare_condition(inpaint, image, mask=corner)
    assert (masked[:, :4, :5] == 0).all() and torch.equal(masked[:, 4:], image[:, 4:])
    with pytest.raises(ShapeError, match=r"the mask of a 12x20 image must be 12x20 .*got 20x12"):
        prepare_condition(inpaint, image, mask=corner.T)
    with pytest.raises(ShapeError, match=r"inpaint expects an RGB image \(3x12x20\), got 1x12x20"):
        prepare_condition(inpaint, grey)
    with pytest.raises(ConfigError, match="a mask is for inpainting"):
        prepare_condition(colorize, image, mask=corner)

    sketch = tiny("caflow-sketch")
    edges, truth = prepare_condition(sketch, image)
    assert truth is image and edges.shape == (1, 12, 20) and torch.equal(edges, sketch_edges(image[None])[0])
    assert set(edges.unique().tolist()) <= {0, 255}
    cond, truth = prepare_condition(sketch, edges)
    assert cond is edges and truth is None

    superres = tiny("caflow-sr4")
    cond, truth = prepare_condition(superres, image)
    assert cond is image and truth is None
    odd = torch.randint(0, 256, (3, 13, 22), dtype=torch.uint8)
    low, truth = prepare_condition(superres, odd, hr=True)  # cropped to sides x4 super-resolution reaches
    assert torch.equal(truth, odd[:, :12, :20]) and torch.equal(low, downscale_bicubic(truth[None], 4)[0])


# ---- command line ---------------------------------------------------------------------------


def test_colorize_an_image_of_any_size_and_a_test_pair(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = photo(tmp_path / "in.png", (21, 13))
    out, panel = tmp_path / "c.png", tmp_path / "panel.png"
    args = ["colorize", str(runs["colorize"]), str(image), "-n", "2", "--best-of", "3", "-o", str(out)]
    assert main([*args, "--json", str(tmp_path / "c.json")]) == 0
    printed = capsys.readouterr().out
    assert "13x21, the best 2 of 3 samples at temperature 0.85" in printed and "PSNR (dB)" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.png", "in.png"]  # no file it was not given
    with Image.open(out) as best:
        assert best.size == (21, 13) and best.mode == "RGB"
    payload = json.loads((tmp_path / "c.json").read_text())
    assert len(payload["bpd"]) == 2 and payload["bpd"][0] <= payload["bpd"][1] and len(payload["scores"]) == 2
    assert payload["tiles"] == 1 and payload["panel"] is None
    assert main([*args, "--panel", str(panel)]) == 2  # c.png is there: replaced only with --force
    assert "c.png exists: give --force to replace it" in capsys.readouterr().err
    assert main([*args, "--panel", str(panel), "--force"]) == 0
    with Image.open(panel) as grid:
        assert grid.size[0] > 4 * grid.size[1]  # condition, 2 samples, truth in one row
    assert "in 6 tiles" not in capsys.readouterr().out
    # a photo larger than a tile: ranked per tile, blended, at its own size
    big = photo(tmp_path / "big.png", (70, 45))
    args = ["colorize", str(runs["colorize"]), str(big), "-n", "1", "--best-of", "2", "-o", str(out), "--force"]
    assert main([*args, "--tile", "32", "--overlap", "8"]) == 0
    assert "45x70, the best 1 of 2 samples at temperature 0.85, ranked per tile in 6 tiles" in capsys.readouterr().out
    with Image.open(out) as best:
        assert best.size == (70, 45)
    assert main([*args, "--tile", "32", "--overlap", "16"]) == 2
    assert "use a tile of at least" in capsys.readouterr().err

    colorize = ["colorize", str(runs["colorize"])]
    assert main([*colorize, "test:5", "-n", "1", "--best-of", "2", "-o", str(out), "--force"]) == 0
    assert "PSNR (dB)" in capsys.readouterr().out
    grey = photo(tmp_path / "grey.png", (16, 8), "L")
    assert main([*colorize, str(grey), "-n", "1", "--best-of", "1", "-o", str(out), "--force"]) == 0
    assert "PSNR" not in capsys.readouterr().out  # a grey input has no truth


def test_inpaint_with_the_centre_or_a_mask(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = photo(tmp_path / "in.png", (20, 12))
    out = tmp_path / "i.png"
    base = ["inpaint", str(runs["inpaint"]), str(image), "-n", "1", "--best-of", "2", "-o", str(out)]
    assert main(base) == 0
    assert "PSNR (dB)" in capsys.readouterr().out
    with Image.open(out) as best:
        assert best.size == (20, 12)
    mask = tmp_path / "mask.png"
    Image.fromarray((np.arange(20)[None].repeat(12, 0) < 5).astype(np.uint8) * 255).save(mask)
    assert main([*base, "--mask", str(mask), "--force"]) == 0
    capsys.readouterr()
    Image.new("L", (12, 20), 255).save(tmp_path / "tall.png")
    assert main([*base, "--mask", str(tmp_path / "tall.png"), "--force"]) == 2
    assert "the mask of a 12x20 image must be 12x20" in capsys.readouterr().err
    grey = photo(tmp_path / "grey.png", (20, 12), "L")
    assert main(["inpaint", str(runs["inpaint"]), str(grey), "-o", str(out), "--force"]) == 2
    assert "inpaint expects an RGB image (3x12x20), got 1x12x20" in capsys.readouterr().err


def test_translate_from_an_edge_map_or_a_photo(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "t.png"
    edges = tmp_path / "edges.png"
    Image.fromarray(sketch_edges(picture(24, 16)[None])[0, 0].numpy()).save(edges)
    assert main(["translate", str(runs["sketch"]), str(edges), "-n", "2", "--best-of", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "temperature 0.8" in printed and "PSNR" not in printed
    with Image.open(out) as best:
        assert best.size == (24, 16)
    args = ["translate", str(runs["sketch"]), "test:0", "-n", "1", "--best-of", "2", "-o", str(out), "--force"]
    assert main(args) == 0
    assert "PSNR (dB)" in capsys.readouterr().out


def test_superres_keeps_the_best_of_m(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    low = photo(tmp_path / "low.png", (16, 8))
    out = tmp_path / "sr.png"
    assert main(["superres", str(runs["superres"]), str(low), "-n", "2", "--best-of", "3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8x16 input -> the best 2 of 3 x4 samples" in printed and "LR-PSNR" in printed
    values = [float(v) for v in printed.split("best first: ")[1].splitlines()[0].split(", ")]
    assert len(values) == 2 and values[0] <= values[1]
    with Image.open(out) as best:  # the best sample itself, 4 times the input's sides
        assert best.size == (64, 32)
    panel = tmp_path / "panel.png"
    args = ["superres", str(runs["superres"]), str(low), "-n", "2", "--best-of", "3", "-o", str(out), "--force"]
    assert main([*args, "--panel", str(panel)]) == 0
    with Image.open(panel) as grid:  # input, bicubic, 2 samples of 32x64 in one row
        assert grid.size[0] > 4 * grid.size[1]
    capsys.readouterr()
    assert main(["superres", str(runs["superres"]), str(low), "-n", "2", "-o", str(out), "--force"]) == 0
    assert "best first" not in capsys.readouterr().out  # --best-of 1: plain samples
    assert main(["superres", str(runs["superres"]), str(low), "-n", "3", "--best-of", "2"]) == 2
    assert "--best-of 2 draws fewer samples than -n 3" in capsys.readouterr().err


def test_translate_table_compares_runs(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    table = tmp_path / "table.json"
    args = ["translate-table", str(runs["colorize"]), str(runs["dual-glow"]), "--count", "3", "--best-of", "2"]
    assert main([*args, "--limit", "12", "--json", str(table)]) == 0
    printed = capsys.readouterr().out
    for row in ("| autoregressive | random sample |", "| autoregressive | best of 2 |", "| dual-glow | best of 2 |"):
        assert row in printed
    assert "the ground truth" in printed
    payload = json.loads(table.read_text())
    assert payload["task"] == "colorize" and set(payload["runs"]) == {"autoregressive", "dual-glow"}
    result = payload["runs"]["dual-glow"]
    assert {"test_bpd", "truth_bpd", "random", "best", "gt_beats_fraction", "gt_beats_all"} <= set(result)
    assert set(result["best"]) == {"bpd", "psnr", "ssim", "rmse"} and result["best"]["bpd"] <= result["random"]["bpd"]
    assert 0 <= result["gt_beats_all"] <= result["gt_beats_fraction"] <= 1
    with Image.open(tmp_path / "table_grid.png") as grid:  # 6 rows: condition, 2 samples, truth
        assert grid.size[1] > grid.size[0]
    assert main(["translate-table", str(runs["colorize"]), str(runs["inpaint"]), "--count", "1"]) == 2
    assert "compare runs of one task" in capsys.readouterr().err


def test_commands_refuse_runs_of_another_task(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = photo(tmp_path / "in.png", (8, 8))
    assert main(["colorize", str(runs["inpaint"]), str(image)]) == 2
    assert "holds a CAFLOW inpaint model; this command needs a CAFLOW colorize model (caflow-colorize)" in (
        capsys.readouterr().err
    )
    assert main(["translate", str(runs["colorize"]), str(image)]) == 2
    assert "(caflow-sketch)" in capsys.readouterr().err
    assert main(["colorize", str(runs["colorize"]), str(image), "-n", "5", "--best-of", "4"]) == 2
    assert "--best-of 4 draws fewer samples than -n 5 keeps" in capsys.readouterr().err


def test_bad_test_pair_indices_are_one_line(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    for command, run in (("colorize", runs["colorize"]), ("inpaint", runs["inpaint"])):
        for spec in ("test:-1", "test:abc", "test:999999"):
            assert main([command, str(run), spec, "-o", str(tmp_path / "x.png")]) == 2, spec
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"{spec}: the test pair must be a test index in [0, " in err, err


def test_json_of_a_tiny_image_is_strict(runs: dict[str, Path], tmp_path: Path) -> None:
    image = photo(tmp_path / "tiny.png", (5, 5))
    out = tmp_path / "s.json"
    assert main(["colorize", str(runs["colorize"]), str(image), "--json", str(out), "-o", str(tmp_path / "c.png")]) == 0
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    payload = json.loads(text)
    assert payload["scores"][0]["ssim"] is None and payload["scores"][0]["psnr"] > 0  # SSIM needs 7x7: none
