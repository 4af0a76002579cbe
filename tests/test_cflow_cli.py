"""Conditional flows through the training loop and the command line: `msflow train` on task pairs,
`eval`, `superres` on a whole photo, `sr-table`, `segment`, `seg-table`, and the refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msflow.cli import main
from runs import read_metrics

COMMON = [
    "train.steps=3",
    "train.max_seconds=0",
    "train.log_every=1",
    "train.batch_size=4",
    "train.eval_batch_size=250",
    "train.progress=false",
    "train.device=cpu",
    "train.num_samples=2",
    "optim.warmup_steps=1",
]
SR_OPTIONS = "model.options={steps: 1, hidden: 8, features: 8, blocks: 1, growth: 4}"
SEG_OPTIONS = "{size: 64, hidden: 8, vgg: [4, 4, 4], dequantizer_steps: 1"


def train(config: str, out: Path, *extra: str) -> Path:
    assert main(["train", config, *COMMON, *extra, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sr_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sr")
    flow = train("photos-sr2-cflow", folder / "flow", SR_OPTIONS)
    baseline = train("photos-sr2-factorized", folder / "baseline", "model.options={features: 8, blocks: 1, growth: 4}")
    return flow, baseline


@pytest.fixture(scope="module")
def seg_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("seg")
    return [
        train("shapes-seg-cflow", folder / "binary", f"model.options={SEG_OPTIONS}, dequantization: binary}}"),
        train(
            "shapes-seg-cflow-uniform", folder / "uniform", f"model.options={SEG_OPTIONS}, dequantization: uniform}}"
        ),
        train("shapes-seg-factorized", folder / "factorized", "model.options={size: 64, vgg: [4, 4, 4]}"),
    ]


def test_training_logs_conditional_bits_per_dim_and_writes_a_pair_grid(sr_runs: tuple[Path, Path]) -> None:
    for run in sr_runs:
        records = read_metrics(run)
        assert [r["step"] for r in records if "loss_bpd" in r] == [1, 2, 3]
        final = [r for r in records if r.get("final")][0]
        results = json.loads((run / "results.json").read_text())
        assert results["n"] == 510 and final["test_bpd"] == results["bpd"]  # 4 test photos, <= 128 crops each
        with Image.open(run / "samples" / "final.png") as grid:
            # a row per test pair: condition, 2 samples at each of 3 temperatures, ground truth
            assert grid.size[0] > 7 * grid.size[1] / 2


def test_eval_of_a_conditional_run_matches_training(sr_runs: tuple[Path, Path], capsys) -> None:
    flow, _ = sr_runs
    assert main(["eval", str(flow)]) == 0
    bpd = json.loads((flow / "results.json").read_text())["bpd"]
    assert f"{bpd:.6f}" in capsys.readouterr().out


def test_superres_of_a_whole_photo_of_odd_size(sr_runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    flow, baseline = sr_runs
    low = tmp_path / "low.png"
    Image.new("RGB", (23, 17), (120, 80, 40)).save(low)
    out, panel, numbers = tmp_path / "up.png", tmp_path / "panel.png", tmp_path / "up.json"
    args = ["superres", str(flow), str(low), "-n", "2", "-t", "0.5", "-o", str(out)]
    assert main([*args, "--panel", str(panel), "--json", str(numbers)]) == 0
    printed = capsys.readouterr().out
    assert "17x23 input -> 2 x2 samples" in printed and "LR-PSNR" in printed and "tiles" not in printed
    with Image.open(out) as result:  # -o is the result itself: sample 1, at twice the input's sides
        assert result.size == (46, 34) and result.mode == "RGB"
    with Image.open(panel) as grid:  # input, bicubic, 2 samples, each 46 pixels wide, in one row
        assert grid.size[1] < grid.size[0] / 3
    payload = json.loads(numbers.read_text())
    assert payload["output"] == [34, 46] and payload["tiles"] == 1 and set(payload["lr_psnr"]) == {
        "bicubic", "sample 1", "sample 2"
    }  # fmt: skip
    # A flat image survives bicubic up and down exactly: infinite PSNR, written as null (strict JSON).
    assert payload["lr_psnr"]["bicubic"] is None and "inf" in printed
    assert main(["superres", str(flow), str(low), "-o", str(tmp_path / "one.png")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["low.png", "one.png", "panel.png", "up.json", "up.png"]
    assert main(["superres", str(baseline), "chelsea", "--hr", "-n", "1", "-o", str(tmp_path / "b.png")]) == 0
    assert "bicubic" in capsys.readouterr().out
    assert main(["superres", str(flow), str(low), "--scale", "4"]) == 2
    assert "x2 super-resolution, not x4" in capsys.readouterr().err
    assert main(["superres", str(flow), str(low), "-o", str(out), "--panel", str(out)]) == 2
    assert "-o and --panel name the same file" in capsys.readouterr().err


def peak_rss_of(argv: list[str]) -> int:
    """Peak resident memory (bytes) of ``python -m msflow ARGV``, in a child of a fresh process."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "msflow", *argv], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1]) * 1024  # Linux reports kilobytes


def photo_like(path: Path, side: int) -> Path:
    """Colour ramps with noise: a photo-sized PNG without a photo's decoding cost in the test."""
    y, x = np.mgrid[:side, :side]
    ramps = np.stack([x * 255 // side, y * 255 // side, (x + y) % 256], -1)
    noise = np.random.default_rng(0).integers(-8, 9, ramps.shape)
    Image.fromarray((ramps + noise).clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_superres_of_a_large_photo_runs_in_tiles(sr_runs: tuple[Path, Path], tmp_path: Path) -> None:
    flow, _ = sr_runs
    out, numbers = tmp_path / "up.png", tmp_path / "up.json"
    args = ["superres", str(flow), str(photo_like(tmp_path / "in.png", 600)), "-o", str(out), "--json", str(numbers)]
    peak = peak_rss_of(args)
    with Image.open(out) as result:
        assert result.size == (1200, 1200)
    payload = json.loads(numbers.read_text())
    assert payload["tiles"] == 4 and payload["output"] == [1200, 1200] and payload["lr_psnr"]["sample 1"] > 15
    assert peak < 1.5e9, f"peak RSS {peak / 1e9:.2f} GB"


@pytest.mark.slow
def test_superres_of_a_3000x3000_photo_stays_within_3_gb(sr_runs: tuple[Path, Path], tmp_path: Path) -> None:
    """Issue 21's bound: x2 of a 3000x3000 input (a 6000x6000 output, 49 tiles) within 3 GB peak RSS."""
    flow, _ = sr_runs
    out = tmp_path / "up.png"
    peak = peak_rss_of(["superres", str(flow), str(photo_like(tmp_path / "in.png", 3000)), "-o", str(out)])
    with Image.open(out) as result:
        assert result.size == (6000, 6000)
    assert peak < 3e9, f"peak RSS {peak / 1e9:.2f} GB"


def test_sr_table_prints_every_method(sr_runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    flow, baseline = sr_runs
    table = tmp_path / "table.json"
    args = ["sr-table", str(flow), str(baseline), "--photos", "chelsea", "--temperatures", "0", "0.8", "--best-of", "2"]
    assert main([*args, "--json", str(table), "-o", str(tmp_path / "t.png")]) == 0
    out = capsys.readouterr().out
    with Image.open(tmp_path / "t.png") as grid:  # bicubic, mode, 2 temperatures, best of 2, truth in one row
        assert grid.size[0] > 5 * grid.size[1]
    for method in ("bicubic", "factorized (mode)", "flow, T = 0 ", "flow, T = 0.8", "flow, best of 2", "truth"):
        assert method in out
    rows = {r["method"]: r for r in json.loads(table.read_text())["rows"]}
    assert list(rows)[0] == "bicubic" and rows["truth"]["detail"] == 1 and rows["truth"]["psnr"] is None
    scored = [r for name, r in rows.items() if name != "truth"]
    assert all(r["psnr"] > 10 and r["detail"] > 0 and r["lr_psnr"] > 10 and 0 <= r["saturated"] < 1 for r in scored)
    # An untrained-or-barely-trained flow at T = 0 is its bicubic base: the two agree closely.
    assert abs(rows["flow, T = 0"]["psnr"] - rows["bicubic"]["psnr"]) < 1.0
    assert main(["sr-table", str(flow), "--photos", "astronaut"]) == 2  # a training photo
    assert "not held-out photos" in capsys.readouterr().err


def test_segment_and_seg_table(seg_runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "seg.png"
    assert main(["segment", str(seg_runs[0]), "test:0", "-n", "5", "-o", str(out)]) == 0
    assert "max F-score of the mean against the true mask" in capsys.readouterr().out
    assert out.exists()
    with Image.open(tmp_path / "seg_mask.png") as mask, Image.open(tmp_path / "seg_mean.png") as mean:
        assert mask.size == mean.size == (64, 64) and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    plot, numbers = tmp_path / "pr.png", tmp_path / "pr.json"
    args = ["seg-table", *map(str, seg_runs), "-n", "3", "--limit", "4", "-o", str(plot), "--json", str(numbers)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for name in ("flow, binary dequantization", "flow, uniform dequantization", "factorized (weighted Bernoulli)"):
        assert name in printed
    payload = json.loads(numbers.read_text())
    assert all(0 <= r["max_f"] <= 1 and r["bpd"] > 0 for r in payload.values())
    assert plot.stat().st_size > 0


def test_mismatched_model_and_data_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["train", "photos-sr2-cflow", *COMMON, SR_OPTIONS, "data.task=sr4", "--out", str(tmp_path / "a")]) == 2
    assert "expects 3x16x16; choose the preset" in capsys.readouterr().err
    assert main(["train", "photos-sr2-cflow", *COMMON, SR_OPTIONS, "data.name=photos-sr4", "--out", str(tmp_path)]) == 2
    assert "data.name=photos-sr4 means data.task=sr4, but data.task is sr2" in capsys.readouterr().err
    assert main(["train", "photos-sr2-cflow", *COMMON, SR_OPTIONS, "data.name=mnist5k", "--out", str(tmp_path)]) == 2
    assert "set data.name to one of photos, folder, shapes-seg" in capsys.readouterr().err
    overrides = ["data.name=mnist5k", "data.task=null"]
    assert main(["train", "photos-sr2-cflow", *COMMON, SR_OPTIONS, *overrides, "--out", str(tmp_path / "b")]) == 2
    assert "needs a paired dataset" in capsys.readouterr().err
    assert main(["train", "mnist5k-glow", *COMMON, "data.name=shapes-seg", "--out", str(tmp_path / "c")]) == 2
    assert "train a conditional model" in capsys.readouterr().err


def test_task_commands_refuse_other_models(sr_runs: tuple[Path, Path], capsys) -> None:
    flow, _ = sr_runs
    assert main(["segment", str(flow), "test:0"]) == 2
    assert "needs a segment model (cflow-seg, factorized-seg)" in capsys.readouterr().err


def test_segment_refuses_images_too_small_for_its_features(seg_runs: list[Path], tmp_path: Path, capsys) -> None:
    for side in (2, 4):
        image = tmp_path / f"tiny{side}.png"
        Image.new("RGB", (side, side + 1), "red").save(image)
        for run in seg_runs:
            assert main(["segment", str(run), str(image), "-n", "2", "-o", str(tmp_path / "s.png")]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "segments images of at least 8x8; enlarge it" in err, err
