"""OOD scores: AUROC, complexity L(x), synthetic and converted sets, typicality, and `msflow ood`."""

from __future__ import annotations

import json
import re
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from tiny import TINY

from msflow.analysis.ood import ood_table, run_ood
from msflow.cli import main
from msflow.data import ImageDataset, get_dataset
from msflow.data.convert import convert_channels, crop_or_pad, resize, to_shape
from msflow.data.ood_sets import SYNTHETIC, load_ood_set, ood_choices, subset
from msflow.errors import ConfigError, DataError, MissingDependencyError, ShapeError
from msflow.metrics.complexity import CODECS, complexity, decode_image, encode_image
from msflow.metrics.ood import auroc, complexity_score, ood_scores, typicality_score
from msflow.runs import load_run
from msflow.train.evaluate import dataset_bits_per_dim

ROW = re.compile(r"^\| (\S+) \| (\d+) \| (\d+\.\d{4}) \+- \d+\.\d{4} \| (\d+\.\d{4}) \|(.*)\|$", re.M)


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


def one_error_line(rc: int, err: str, command: str) -> str:
    assert "Traceback" not in err and rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"msflow {command}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Glow on 8x8 digits, trained for 3 steps by the real command."""
    run = tmp_path_factory.mktemp("ood") / "run"
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=3", "--out", str(run)]) == 0
    return run


# ----------------------------------------------------------------------------- AUROC and scores


def test_auroc_hand_computed() -> None:
    # in = [0.9, 0.4, 0.4], out = [0.4, 0.1]: pairs won 0.9>0.4, 0.9>0.1, 0.4>0.1 twice, 0.4=0.4 twice
    assert auroc([0.9, 0.4, 0.4], [0.4, 0.1]) == pytest.approx((1 + 1 + 1 + 1 + 0.5 + 0.5) / 6)
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert auroc([5.0] * 3, [5.0] * 4) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 20, size=137).astype(float)  # integers: many ties
    b = rng.integers(3, 25, size=91).astype(float)
    labels = np.r_[np.ones(len(a)), np.zeros(len(b))]
    assert auroc(a, b) == pytest.approx(roc_auc_score(labels, np.r_[a, b]), abs=1e-12)
    assert auroc(b, a) == pytest.approx(1 - auroc(a, b), abs=1e-12)


def test_auroc_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        auroc([1.0, float("nan")], [1.0])


def test_scores_and_typicality() -> None:
    bpd = torch.tensor([0.2, 1.0, 1.4, 3.0], dtype=torch.float64)
    assert typicality_score(bpd, 1.2).tolist() == pytest.approx([-1.0, -0.2, -0.2, -1.8])
    # both too likely (0.2) and too unlikely (3.0) images are atypical
    typical = typicality_score(bpd, 1.2)
    assert typical[1] > typical[0] and typical[2] > typical[3]
    assert complexity_score(bpd, torch.tensor([1.0, 1.0, 4.0, 4.0])).tolist() == pytest.approx([0.8, 0.0, 2.6, 1.0])
    scores = ood_scores(bpd, torch.ones(4), typical_bpd=1.2)
    assert set(scores) == {"-bpd", "S", "typicality"}
    assert torch.equal(scores["-bpd"], -bpd)


# ----------------------------------------------------------------------------- complexity L(x)


def _test_images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    digits = get_dataset("digits8", "test").images[:2]
    return [
        torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=g),
        torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8, generator=g),
        torch.full((3, 8, 8), 200, dtype=torch.uint8),
        digits[0],
        digits[1],
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_codecs_are_lossless(codec: str) -> None:
    for image in _test_images():
        decoded = decode_image(encode_image(image, codec), codec, channels=image.shape[0])
        assert decoded.dtype == torch.uint8
        assert torch.equal(decoded, image), (codec, tuple(image.shape))


@pytest.mark.parametrize("codec", CODECS)
def test_noise_is_more_complex_than_constant_images(codec: str) -> None:
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=g)
    constant = torch.full((4, 1, 28, 28), 90, dtype=torch.uint8)
    digits = to_shape(get_dataset("digits8", "test").images[:4], (1, 28, 28))[0]
    lengths = [complexity(x, codec) for x in (constant, digits, noise)]
    assert all(v.shape == (4,) and v.dtype == torch.float64 for v in lengths)
    assert lengths[0].max() < lengths[1].min() and lengths[1].max() < lengths[2].min()
    assert lengths[2].min() > 7.5  # noise is incompressible: about 8 bits per sub-pixel


def test_complexity_is_bytes_times_8_over_dims() -> None:
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert complexity(x, "png").tolist() == [len(encode_image(image, "png")) * 8 / 192 for image in x]


def test_codec_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="png, webp, jpeg2000, jpegxl"):
        complexity(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "gif")
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'msflow\[metrics\]' \(or pip install imagecodecs\)"):
        complexity(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "jpegxl")


# ----------------------------------------------------------------------------- sets in the model's shape


def test_synthetic_sets_shapes_and_content() -> None:
    ref = get_dataset("digits8", "test").images[:64]
    g = torch.Generator
    constant = SYNTHETIC["constant"](ref, g().manual_seed(0))
    noise = SYNTHETIC["noise"](ref, g().manual_seed(0))
    shuffled = SYNTHETIC["shuffled"](ref, g().manual_seed(0))
    for x in (constant, noise, shuffled):
        assert x.shape == ref.shape and x.dtype == torch.uint8
    assert torch.equal(constant, constant[..., :1, :1].expand_as(constant))
    assert len(constant[:, 0, 0, 0].unique()) > 20  # a random value per image
    assert noise.min() < 10 and noise.max() > 245 and noise.double().std() > 60
    assert torch.equal(shuffled.flatten(1).sort(1).values, ref.flatten(1).sort(1).values)  # same pixels
    assert (shuffled != ref).flatten(1).any(1).float().mean() > 0.9  # but moved
    rgb = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    rgb_const = SYNTHETIC["constant"](rgb, g().manual_seed(0))
    assert torch.equal(rgb_const, rgb_const[..., :1, :1].expand_as(rgb_const))
    # pixels move with all their channels: the triplets are the same, in another order
    moved = SYNTHETIC["shuffled"](rgb, g().manual_seed(0))
    as_set = lambda x: sorted(map(tuple, x.permute(0, 2, 3, 1).reshape(5, 16, 3)[0].tolist()))  # noqa: E731
    assert as_set(moved) == as_set(rgb)


def test_channel_and_size_conversion() -> None:
    rgb = torch.tensor([[10, 200, 30]], dtype=torch.uint8).reshape(1, 3, 1, 1).expand(1, 3, 4, 6)
    grey = convert_channels(rgb, 1)
    assert grey.shape == (1, 1, 4, 6) and grey.unique().tolist() == [round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)]
    assert torch.equal(convert_channels(grey, 3), grey.expand(1, 3, 4, 6))
    x = torch.arange(36, dtype=torch.uint8).reshape(1, 1, 6, 6)
    assert torch.equal(crop_or_pad(x, 4, 4), x[..., 1:5, 1:5])
    padded = crop_or_pad(x, 8, 8)
    assert torch.equal(padded[..., 1:7, 1:7], x) and padded.sum() == x.sum()
    assert torch.equal(resize(x, 6, 6), x)
    with pytest.raises(ShapeError, match="grey <-> RGB"):
        convert_channels(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 3)


def test_datasets_to_model_shape() -> None:
    digits = get_dataset("digits8", "test").images[:10]
    up, how = to_shape(digits, (1, 28, 28))
    assert up.shape == (10, 1, 28, 28) and up.dtype == torch.uint8 and how == "bilinear resize 8x8 -> 28x28"
    # upsampling keeps the picture: the same brightness, and shrunk back it correlates with the original
    assert abs(up.double().mean() - digits.double().mean()) < 3
    assert torch.corrcoef(torch.stack([resize(up, 8, 8).double().flatten(), digits.double().flatten()]))[0, 1] > 0.9
    patches = get_dataset("patches32", "test").images[:10]
    grey, how = to_shape(patches, (1, 28, 28))
    assert grey.shape == (10, 1, 28, 28) and how == "RGB -> grey, centre-crop 32x32 -> 28x28"
    assert torch.equal(grey, convert_channels(patches, 1)[..., 2:30, 2:30])
    assert to_shape(patches, (3, 64, 64), fit="crop")[1] == "zero-pad 32x32 -> 64x64"
    assert to_shape(digits, (3, 8, 8))[1] == "grey -> RGB"
    assert to_shape(digits, (1, 8, 8))[1] == "unchanged"
    with pytest.raises(ShapeError, match="auto, crop, resize"):
        to_shape(digits, (1, 28, 28), fit="stretch")


def test_load_ood_set() -> None:
    ref = torch.zeros(20, 1, 28, 28, dtype=torch.uint8)
    ds, how = load_ood_set("patches32", ref, n=15, seed=3)
    assert isinstance(ds, ImageDataset) and ds.images.shape == (15, 1, 28, 28)
    assert how == "patches32 test: RGB -> grey, centre-crop 32x32 -> 28x28"
    assert torch.equal(load_ood_set("patches32", ref, n=15, seed=3)[0].images, ds.images)
    assert not torch.equal(load_ood_set("patches32", ref, n=15, seed=4)[0].images, ds.images)
    assert load_ood_set("noise", ref, n=5)[0].images.shape == ref.shape  # synthetic sets follow the reference
    assert ood_choices()[:3] == ["constant", "noise", "shuffled"] and "digits8" in ood_choices()
    with pytest.raises(DataError, match="unknown OOD set 'svhn': choose from constant, noise, shuffled, mnist5k"):
        load_ood_set("svhn", ref)
    assert torch.equal(subset(torch.arange(5), 10), torch.arange(5))


def test_run_ood_with_a_stand_in_model() -> None:
    # A stand-in "model" whose bits/dim is the mean brightness: bright sets look unlikely.
    bpd_fn = lambda x: x.double().mean((1, 2, 3)) / 32  # noqa: E731
    test = get_dataset("digits8", "test").images
    result = run_ood(bpd_fn, test, get_dataset("digits8", "train").images, ["noise", "constant", "noise"], n=100)
    assert [s.name for s in result.outliers] == ["noise", "constant"]  # duplicates dropped
    assert result.n_train == 100 and len(result.inlier.bpd) == 100
    noise = result.outliers[0]
    labels = np.r_[np.ones(100), np.zeros(100)]
    for key, value in noise.auroc.items():
        expected = roc_auc_score(labels, np.r_[result.inlier.scores[key].numpy(), noise.scores[key].numpy()])
        assert value == pytest.approx(expected, abs=1e-12)
    assert noise.auroc["-bpd"] > 0.99
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ood"][0]["auroc"] == noise.auroc and len(data["per_image"]["noise"]["bpd"]) == 100
    assert len(ROW.findall(ood_table(result))) == 3


# ----------------------------------------------------------------------------- the command


def test_ood_command(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png, out_json = tmp_path / "figs" / "ood.png", tmp_path / "ood.json"
    names = ["mnist5k", "patches32", "constant", "noise", "shuffled"]
    argv = ["ood", str(tiny_run), "--ood", *names, "--n", "60", "-o", str(png), "--json", str(out_json)]
    rc, out, err = call_main(argv, capsys)
    assert rc == 0, err
    rows = {m[0]: m for m in ROW.findall(out)}
    assert list(rows) == ["digits8", *names]
    assert "mnist5k: mnist5k test: bilinear resize 28x28 -> 8x8" in out
    assert "patches32: patches32 test: RGB -> grey, bilinear resize 32x32 -> 8x8" in out
    for name in names:
        aurocs = [float(v) for v in rows[name][4].split("|")]
        assert len(aurocs) == 3 and all(0 <= v <= 1 for v in aurocs)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300
    data = json.loads(out_json.read_text())
    assert data["codec"] == "png" and data["in_distribution"]["n"] == 60
    assert [s["name"] for s in data["ood"]] == names
    assert float(rows["noise"][2]) == pytest.approx(data["ood"][3]["bpd"], abs=1e-4)
    # the in-distribution bits/dim are those of `msflow eval`'s evaluation code on the same images
    model, cfg, _ = load_run(tiny_run)
    test = subset(get_dataset("digits8", "test").images, 60, 0)
    expected = dataset_bits_per_dim(model, ImageDataset(test), cfg.train.eval_batch_size, seed=0)
    assert np.allclose(data["per_image"]["digits8"]["bpd"], expected.numpy(), atol=1e-6)
    # and each AUROC is that of the per-image numbers
    typical, inlier = data["typical_bpd"], np.array(data["per_image"]["digits8"]["bpd"])
    noise = np.array(data["per_image"]["noise"]["bpd"])
    labels = np.r_[np.ones(60), np.zeros(60)]
    typ = roc_auc_score(labels, -np.abs(np.r_[inlier, noise] - typical))
    assert data["ood"][3]["auroc"]["typicality"] == pytest.approx(typ, abs=1e-9)


def test_ood_with_another_in_distribution_set(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        "ood",
        str(tiny_run),
        "--in",
        "patches32-grey",
        "--ood",
        "shuffled",
        "--n",
        "20",
        "-o",
        str(tmp_path / "o.png"),
    ]
    rc, out, err = call_main(argv, capsys)
    assert rc == 0, err
    assert "in-distribution: patches32-grey test, 20 images" in out
    assert [m[0] for m in ROW.findall(out)] == ["patches32-grey", "shuffled"]


def test_ood_bad_arguments(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ood.png"
    rc, _, err = call_main(["ood", str(tiny_run), "--ood", "noise", "svhn", "-o", str(out)], capsys)
    line = one_error_line(rc, err, "ood")
    assert "unknown OOD set 'svhn'" in line and "constant, noise, shuffled, mnist5k, digits8" in line
    rc, _, err = call_main(["ood", str(tiny_run), "--ood", "noise", "--codec", "gif"], capsys)
    assert "png" in one_error_line(rc, err, "ood") and "jpegxl" in err
    rc, _, err = call_main(["ood", str(tiny_run), "--ood", "noise", "--n", "0"], capsys)
    one_error_line(rc, err, "ood")
    rc, _, err = call_main(["ood", str(tmp_path / "nothing"), "--ood", "noise"], capsys)
    one_error_line(rc, err, "ood")
    assert not out.exists()
