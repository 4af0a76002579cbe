"""Task recipes on image sources: folders of photos of any size, streamed random crops, fixed test
crops, and every shipped task config trained from a user's folder through the command line."""

from __future__ import annotations

import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from msflow.cli import main
from msflow.data.batches import StepBatches
from msflow.data.pairs import downscale_bicubic
from msflow.data.photos import PHOTO_SPLIT, PHOTOGRAPHS, bundled_photos
from msflow.data.recipes import RECIPES
from msflow.data.sources import BundledPhotos, FolderImages
from msflow.data.stream import CropStream, draw_seed, fixed_pairs
from msflow.data.tasks import task_data
from msflow.data.translation import central_mask, sketch_edges, to_grey
from msflow.errors import DataError
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from runs import SUBPROCESS_ENV, TIMEOUT, msflow_command, run_msflow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TASK_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml") if "task" in (yaml.safe_load(p.read_text())["data"]))


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundled photographs as a user's folder: PNG, JPEG, WebP and TIFF, nested, mixed sizes, one
    greyscale, one smaller than the crop, one corrupt file; and a folder of masks with the same names."""
    root, masks = tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("masks")
    (root / "trip" / "day2").mkdir(parents=True)
    photos = bundled_photos()
    for i, name in enumerate(PHOTOGRAPHS):
        image = Image.fromarray(photos[name])
        if i % 2:  # mixed sizes: every other photo shrunk by an odd factor
            image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.Resampling.LANCZOS)
        if name == "flower":
            image = image.convert("L")
        folder = root if i < 3 else root / "trip" if i < 6 else root / "trip" / "day2"
        ext = [".png", ".jpg", ".webp", ".tiff"][i % 4]
        image.save(folder / f"{name}{ext}")
        mask_dir = masks / folder.relative_to(root)
        mask_dir.mkdir(parents=True, exist_ok=True)
        luma = np.asarray(image.convert("L"))
        Image.fromarray(((luma > luma.mean()) * 255).astype(np.uint8)).save(mask_dir / f"{name}.png")
    Image.new("RGB", (20, 24), "red").save(root / "thumbnail.png")
    Image.new("L", (20, 24)).save(masks / "thumbnail.png")
    (root / "trip" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root, masks


# ---- recipes --------------------------------------------------------------------------------


def test_recipes_make_each_tasks_pair() -> None:
    crop = torch.from_numpy(bundled_photos()["astronaut"][100:132, 200:232].transpose(2, 0, 1).copy())[None]
    g = torch.Generator().manual_seed(0)
    target, cond = RECIPES["sr4"].pair(crop, None, g)
    assert torch.equal(target, crop[0]) and torch.equal(cond, downscale_bicubic(crop, 4)[0])
    target, cond = RECIPES["colorize"].pair(crop, None, g)
    assert torch.equal(cond, to_grey(crop)[0]) and cond.shape == (1, 32, 32)
    _, cond = RECIPES["inpaint"].pair(crop, None, g)
    assert cond[:, central_mask(32, 32)].eq(0).all() and torch.equal(cond[:, :8], crop[0, :, :8])
    boxes = [RECIPES["inpaint"].pair(crop, None, torch.Generator().manual_seed(s), "boxes")[1] for s in range(6)]
    hidden = [float((b == 0).all(0).float().mean()) for b in boxes]
    assert all(0.05 < h < 0.8 for h in hidden) and len({round(h, 4) for h in hidden}) > 2
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    mask[..., :5, :7] = 1
    _, cond = RECIPES["inpaint"].pair(crop, mask, g, "folder")
    assert cond[:, :5, :7].eq(0).all() and torch.equal(cond[:, 5:], crop[0, :, 5:])
    target, cond = RECIPES["segment"].pair(crop, mask, g)
    assert torch.equal(target, mask[0]) and torch.equal(cond, crop[0])
    with pytest.raises(DataError, match="data.masks"):
        RECIPES["segment"].pair(crop, None, g)


def test_sketch_edges_run_through_the_crop_border_as_in_the_whole_photo() -> None:
    photo = torch.from_numpy(bundled_photos()["astronaut"].transpose(2, 0, 1).copy())[None]
    whole = sketch_edges(photo)[0, 0, 200:232, 100:132]
    m = RECIPES["sketch"].margin
    _, edges = RECIPES["sketch"].pair(photo[..., 200 - m : 232 + m, 100 - m : 132 + m], None, torch.Generator())
    cropped_alone = sketch_edges(photo[..., 200:232, 100:132])[0, 0]
    assert (edges[0] == whole).float().mean() > 0.97  # Canny's hysteresis is global: a few pixels may differ
    assert edges[0, 0].any() or edges[0, :, 0].any()  # edges reach the border ...
    assert not cropped_alone[0].any() and not cropped_alone[:, 0].any()  # ... which Canny alone leaves blank


# ---- sources and streams --------------------------------------------------------------------


def test_bundled_photographs_leave_out_non_photographs_and_split_by_photo() -> None:
    train, test = BundledPhotos("train"), BundledPhotos("test")
    assert not {"retina", "hubble_deep_field", "ihc"} & set(train.names + test.names)
    assert set(train.names) | set(test.names) == set(PHOTOGRAPHS) and not set(train.names) & set(test.names)
    assert all(PHOTO_SPLIT[n] == "test" for n in test.names)
    colour = lambda src: np.concatenate([src.read(i).reshape(-1, 3) for i in range(len(src))]).mean(0)  # noqa: E731
    gap = np.abs(colour(train) - colour(test))
    assert gap.max() < 25, f"train and test mean colours differ by {gap}"  # was (19, 54, 59) with retina in train


def test_stream_draws_are_a_pure_function_of_seed_and_index_and_weigh_photos_equally() -> None:
    source = BundledPhotos("train")
    a, b = (
        CropStream(source, RECIPES["sr2"], 32, seed=3),
        CropStream(BundledPhotos("train"), RECIPES["sr2"], 32, seed=3),
    )
    for k in (0, 7, 123456):
        assert all(torch.equal(x, y) for x, y in zip(a[k], b[k], strict=True))
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], CropStream(source, RECIPES["sr2"], 32, seed=4)[0][0])
    # Each photo's share of the draws is 1/5 whatever its size.
    picks = []
    for k in range(1500):
        g = torch.Generator().manual_seed(draw_seed(3, k))
        picks.append(int(torch.randint(len(source), (), generator=g)))
    shares = np.bincount(picks, minlength=len(source)) / len(picks)
    assert np.all(np.abs(shares - 1 / len(source)) < 0.04), shares


def test_loader_workers_give_the_same_batches_and_resume_mid_run() -> None:
    stream = CropStream(BundledPhotos("train"), RECIPES["sketch"], 32, seed=1)
    inline = StepBatches(stream, 4, seed=1).take(0, 5)
    parallel = StepBatches(stream, 4, seed=1, workers=2).take(0, 5)
    resumed = StepBatches(stream, 4, seed=1, workers=2).take(3, 2)
    for (x, c), (y, d) in zip(inline, parallel, strict=True):
        assert torch.equal(x, y) and torch.equal(c, d)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(inline[3:], resumed, strict=True))
    shard = StepBatches(stream, 4, seed=1, shard=(2, 4)).take(0, 1)[0][0]
    assert torch.equal(shard, inline[0][0][2:])


def test_folder_of_any_size_and_format_with_warnings_for_bad_files(user_folder: tuple[Path, Path]) -> None:
    root, _ = user_folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test = FolderImages(root, "train", min_side=32), FolderImages(root, "test", min_side=32)
    text = " ".join(str(w.message) for w in caught)
    assert ("broken.jpg" in text) + ("thumbnail.png" in text) == 2, text  # one split holds each bad file
    assert len(train) + len(test) == len(PHOTOGRAPHS) and len(test) >= 1
    assert any(n.startswith("trip/day2/") for n in train.names + test.names)
    sizes = {FolderImages(root, s, min_side=32).size(i) for s in ("train", "test") for i in range(len(test))}
    assert len(sizes) > 1
    for src in (train, test):
        for i in range(len(src)):
            image = src.read(i)
            assert image.dtype == np.uint8 and image.shape == (*src.size(i), 3)  # greyscale flower repeated to RGB


def test_bad_folders_give_one_line_naming_the_fix(tmp_path: Path, user_folder: tuple[Path, Path]) -> None:
    root, masks = user_folder
    with pytest.raises(DataError, match="does not exist"):
        FolderImages(tmp_path / "nowhere", "train")
    (tmp_path / "empty" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found"):
        FolderImages(tmp_path / "empty", "train")
    with pytest.raises(DataError, match="no usable .* lower data.crop"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FolderImages(root, "train", min_side=5000)
    partial = tmp_path / "partial_masks"
    partial.mkdir()
    Image.new("L", (4, 4)).save(partial / "unrelated.png")
    with pytest.raises(DataError, match="no mask for"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FolderImages(root, "train", min_side=32, masks=partial)
    with pytest.raises(DataError, match="data.masks"):
        task_data("folder", "segment", "train", 0, root=root)
    with pytest.raises(DataError, match="multiple of 4"):
        task_data("photos", "sr4", "train", 0, crop=30)


def test_split_folders_are_the_splits(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.new("RGB", (40 + i, 50)).save(tmp_path / split / f"{i}.png")
    assert len(FolderImages(tmp_path, "train")) == 3 and len(FolderImages(tmp_path, "test")) == 2


def test_test_pairs_are_fixed_seeded_crops() -> None:
    a = fixed_pairs(BundledPhotos("test"), RECIPES["inpaint"], 32, seed=0, per_image=10, holes="boxes")
    b = task_data("photos", "inpaint", "test", 0, holes="boxes", test_crops=10)
    assert len(a) == 40 and torch.equal(a.images, b.images) and torch.equal(a.conds, b.conds)
    c = task_data("photos", "inpaint", "test", 1, holes="boxes", test_crops=10)
    assert not torch.equal(a.conds, c.conds)


# ---- every task config from a user's folder, through the command line ------------------------

COMMON = [
    "train.steps=2",
    "train.max_seconds=0",
    "train.batch_size=4",
    "train.progress=false",
    "train.device=cpu",
    "train.num_samples=1",
    "optim.warmup_steps=1",
    "data.test_crops=2",
]
# Tiny sizes of each family (dotted, so each config keeps its other options).
TINY = {
    "cflow-sr": {"steps": 1, "hidden": 8, "features": 8, "blocks": 1, "growth": 4},
    "factorized-sr": {"features": 8, "blocks": 1, "growth": 4},
    "caflow": {"hidden": 8, "cond_hidden": 8, "cond_steps": 1, "target_steps": 1, "flow_steps": 1, "transitions": 1},
    "cflow-seg": {"hidden": 8, "steps": 1, "vgg": "[4,4,4]", "dequantizer_steps": 1},
    "factorized-seg": {"vgg": "[4,4,4]"},
}


def _tiny_options(config: str) -> list[str]:
    model = yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]["name"]
    family = next(k for k in TINY if model.startswith(k))
    return [f"model.options.{k}={v}" for k, v in TINY[family].items()]


@pytest.mark.parametrize("config", TASK_CONFIGS)
def test_every_task_config_trains_on_a_users_folder(
    config: str, user_folder: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, masks = user_folder
    crop = 64 if "caflow" in config else 48  # not the presets' 32: the model follows data.crop
    data = ["data.name=folder", f"data.root={root}", f"data.crop={crop}"]
    if "seg" in config:
        data.append(f"data.masks={masks}")
    out = tmp_path / "run"
    assert main(["train", config, *COMMON, *data, *_tiny_options(config), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and ("broken.jpg" in err or "thumbnail.png" in err)
    _, meta = load_checkpoint(out / CHECKPOINT)
    assert meta["config"]["model"]["options"]["size"] == crop and meta["step"] == 2
    assert meta["config"]["data"]["name"] == "folder"


def test_streamed_run_killed_mid_run_resumes_bit_for_bit(tmp_path: Path) -> None:
    args = ["train", "photos-sr2-cflow", *COMMON, *_tiny_options("photos-sr2-cflow"), "data.workers=2"]
    args += ["train.steps=30", "train.checkpoint_every=4", "train.log_every=1"]
    assert run_msflow([*args, "--out", str(tmp_path / "whole")], cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*msflow_command(), *args, "--out", str(run_dir)], cwd=tmp_path, env=SUBPROCESS_ENV)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run_dir / CHECKPOINT).exists() or load_checkpoint(run_dir / CHECKPOINT)[1]["step"] < 8:
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before it was killed"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (run_dir / "results.json").exists()
    assert run_msflow([*args, "--out", str(run_dir)], cwd=tmp_path).returncode == 0
    whole, _ = load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    resumed, meta = load_checkpoint(run_dir / CHECKPOINT)
    assert meta["step"] == 30 and set(whole) == set(resumed)
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []


def test_task_table_scores_colorization_of_whole_photos_against_the_grey_input(tmp_path: Path, capsys) -> None:
    import json

    run = tmp_path / "colorize"
    assert (
        main(["train", "photos-colorize-caflow", *COMMON, *_tiny_options("photos-colorize-caflow"), "--out", str(run)])
        == 0
    )
    out = tmp_path / "table.json"
    args = ["task-table", str(run), "--photos", "rocket", "--temperatures", "0", "--best-of", "2", "--json", str(out)]
    assert main([*args, "-o", str(tmp_path / "grid.png")]) == 0
    printed = capsys.readouterr().out
    assert "colorize of the 1 held-out photos (rocket)" in printed and "colour error" in printed
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["grey input", "colorize, T = 0", "colorize, best of 2", "truth"]
    grey = rows["grey input"]
    assert grey["colour_error"] > 3 and grey["lr_psnr"] is None and grey["bpd"] is None
    # The colorization flow keeps the given luma: at T = 0 an (almost) untrained one returns the grey input.
    assert abs(rows["colorize, T = 0"]["colour_error"] - grey["colour_error"]) < 1.0
    assert rows["colorize, T = 0"]["bpd"] > 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 3 * grid.size[1]


def test_task_table_refuses_unconditional_and_mixed_runs(tmp_path: Path, capsys) -> None:
    from tiny import TINY as GLOW

    glow = tmp_path / "glow"
    assert main(["train", "mnist5k-glow", *GLOW, "train.steps=1", "--out", str(glow)]) == 0
    assert main(["task-table", str(glow)]) == 2
    assert "task-table scores conditional models" in capsys.readouterr().err
    seg = tmp_path / "seg"
    tiny_seg = _tiny_options("shapes-seg-factorized")
    assert main(["train", "shapes-seg-factorized", *COMMON, *tiny_seg, "--out", str(seg)]) == 0
    assert main(["task-table", str(seg)]) == 2
    assert "covers superres, colorize; for segment use msflow seg-table" in capsys.readouterr().err


def test_a_photo_that_breaks_while_streaming_is_named_on_one_line(tmp_path: Path, capsys) -> None:
    photos = bundled_photos()
    for split, names in (("train", PHOTOGRAPHS[:3]), ("test", PHOTOGRAPHS[3:5])):
        (tmp_path / split).mkdir()
        for name in names:
            Image.fromarray(photos[name]).save(tmp_path / split / f"{name}.jpg")
    broken = tmp_path / "train" / f"{PHOTOGRAPHS[0]}.jpg"
    broken.write_bytes(broken.read_bytes()[:5000])  # a valid header, a truncated body: found only when decoded
    args = ["train", "photos-sr2-cflow", *COMMON, *_tiny_options("photos-sr2-cflow"), "train.steps=30"]
    assert (
        main([*args, "data.name=folder", f"data.root={tmp_path}", "data.workers=1", "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot read image {broken}" in err and "Traceback" not in err


def test_unconditional_models_train_on_random_crops_of_photos_of_any_size(
    user_folder: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = user_folder
    args = ["train", "patches32-glow", *COMMON, "model.options.steps=1", "model.options.hidden=8"]
    args += ["data.name=folder", f"data.root={root}", "data.crop=32", "train.num_samples=0"]
    assert main([*args, "--out", str(tmp_path / "glow")]) == 0
    trained = capsys.readouterr().out.splitlines()[0]
    assert main(["eval", str(tmp_path / "glow")]) == 0
    assert trained.split("(")[0] in capsys.readouterr().out  # the same fixed test crops, the same bits/dim
    stream = task_data("folder", None, "train", 0, root=root, crop=32)
    x, cond = StepBatches(stream, 4, 0).take(0, 1)[0]
    assert x.shape == (4, 3, 32, 32) and cond is None and stream.cond_shape is None
    assert main([*args, "data.name=mnist5k", "--out", str(tmp_path / "m")]) == 2
    assert "use data.name=photos or folder" in capsys.readouterr().err
