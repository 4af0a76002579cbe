"""Temperature sweep: the Frechet distance, msflow's feature classifier and its cache, `msflow temperature`."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from tiny import TINY

import msflow.analysis.features as features_mod
from msflow.analysis.features import (
    ClassifierConfig,
    accuracy,
    classifier_features,
    classifier_path,
    load_or_train_classifier,
    train_classifier,
)
from msflow.analysis.temperature import format_table, metric_name, temperature_sweep
from msflow.cli import main
from msflow.data import ImageDataset, get_dataset
from msflow.errors import DataError, MsflowError, ShapeError
from msflow.metrics.frechet import fit_gaussian, frechet_distance, gaussian_frechet_distance
from msflow.runs import load_run

ROW = re.compile(r"^ +(\d+\.\d\d) +(\d+\.\d{4})$", re.M)
REFERENCE = re.compile(r"^ +train/test +(\d+\.\d{4}) ", re.M)
SMALL = ClassifierConfig(width=8, features=16, epochs=2)


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


def one_error_line(rc: int, err: str, *needles: str) -> str:
    assert "Traceback" not in err and rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msflow temperature: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset]:
    return get_dataset("digits8", "train"), get_dataset("digits8", "test")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Glow on 8x8 digits, trained for 4 steps by the real command."""
    run = tmp_path_factory.mktemp("temperature") / "run"
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=4", "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One classifier cache for the CLI tests, so digits8's classifier is trained once."""
    return tmp_path_factory.mktemp("cache")


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_closed_form_for_diagonal_gaussians() -> None:
    g = np.random.default_rng(0)
    mu1, mu2 = g.normal(size=5), g.normal(size=5)
    var1, var2 = g.uniform(0.1, 3, size=5), g.uniform(0.1, 3, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = gaussian_frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-12)
    # The same Gaussians in a rotated basis: the distance is a property of the distributions.
    q, _ = np.linalg.qr(g.normal(size=(5, 5)))
    rotated = gaussian_frechet_distance(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_the_sqrtm_formula_for_non_commuting_covariances() -> None:
    g = np.random.default_rng(1)
    a, b = g.normal(size=(6, 6)), g.normal(size=(6, 6))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    assert not np.allclose(cov1 @ cov2, cov2 @ cov1)
    mu1, mu2 = g.normal(size=6), g.normal(size=6)
    root = scipy.linalg.sqrtm(cov1 @ cov2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
    assert gaussian_frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)
    assert gaussian_frechet_distance(mu2, cov2, mu1, cov1) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_feature_sets_exact_cases() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, 4, generator=g), torch.randn(200, 4, generator=g) * 2 + 1
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    # A shift moves only the mean: d^2 = |c|^2. Doubling a centred set: Tr(S + 4S - 4S) = Tr(S).
    shift = torch.tensor([1.0, -2.0, 0.5, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.double().pow(2).sum()), rel=1e-9)
    centred = a.double() - a.double().mean(0)
    assert frechet_distance(centred, 2 * centred) == pytest.approx(float(torch.cov(centred.T).trace()), rel=1e-9)
    # A constant set (all samples identical, as at temperature 0): zero covariance, d^2 = |mu|^2 + Tr(S2).
    const = torch.full((50, 4), 0.5, dtype=torch.float64)
    _, cov_b = fit_gaussian(b)
    expected = float((0.5 - b.double().mean(0)).pow(2).sum()) + np.trace(cov_b)
    assert frechet_distance(const, b) == pytest.approx(expected, rel=1e-9)


def test_frechet_rejects_bad_inputs() -> None:
    with pytest.raises(MsflowError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(MsflowError, match="one D"):
        frechet_distance(np.random.rand(5, 3), np.random.rand(5, 4))
    with pytest.raises(MsflowError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.random.rand(5, 3))


# ----------------------------------------------------------------------------- classifier and cache


def test_classifier_learns_digits_on_a_tiny_budget(digits: tuple[ImageDataset, ImageDataset]) -> None:
    train, test = digits
    net = train_classifier(train, SMALL)
    acc = accuracy(net, test)
    assert acc > 0.5, acc  # chance is 0.1
    again = train_classifier(train, SMALL)
    assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), again.state_dict().values(), strict=True))
    feats = classifier_features(net, test.images)
    assert feats.shape == (len(test), SMALL.features) and feats.dtype == torch.float64


def test_classifier_is_cached_and_not_retrained(
    digits: tuple[ImageDataset, ImageDataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = digits
    calls = []
    real = features_mod.train_classifier
    monkeypatch.setattr(features_mod, "train_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    net, info = load_or_train_classifier(train, test, SMALL, cache_dir=tmp_path)
    path = Path(info["path"])
    assert info["trained"] and len(calls) == 1
    assert path.parent == tmp_path / "classifiers" and path.name.startswith("classifier-digits8-1x8x8-")
    assert path.suffix == ".safetensors" and path.read_bytes()[8:9] == b"{"  # safetensors: JSON header, no pickle
    stamp = path.stat().st_mtime_ns
    cached, info2 = load_or_train_classifier(train, test, SMALL, cache_dir=tmp_path)
    assert not info2["trained"] and len(calls) == 1 and path.stat().st_mtime_ns == stamp
    assert info2["test_accuracy"] == info["test_accuracy"] == pytest.approx(accuracy(cached, test))
    assert torch.equal(classifier_features(net, test.images), classifier_features(cached, test.images))
    # Another config or other data gets its own file; the environment variable moves the cache.
    other = ClassifierConfig(width=8, features=16, epochs=2, seed=1)
    assert classifier_path(train, test, other, tmp_path) != path
    fewer = ImageDataset(train.images[:100], train.labels[:100], name="digits8")
    assert classifier_path(fewer, test, SMALL, tmp_path) != path
    monkeypatch.setenv("MSFLOW_CACHE", str(tmp_path / "env"))
    assert classifier_path(train, test, SMALL).parent == tmp_path / "env" / "classifiers"
    # A damaged cache file is retrained and replaced, not trusted.
    path.write_bytes(b"not a safetensors file")
    _, info3 = load_or_train_classifier(train, test, SMALL, cache_dir=tmp_path)
    assert info3["trained"] and len(calls) == 2 and path.read_bytes()[8:9] == b"{"


def test_unlabelled_data_names_the_fix(digits: tuple[ImageDataset, ImageDataset], tmp_path: Path) -> None:
    train, test = digits
    unlabelled = ImageDataset(train.images, name="photos")
    with pytest.raises(DataError, match="no class labels.*one subfolder per class"):
        load_or_train_classifier(unlabelled, test, SMALL, cache_dir=tmp_path)
    assert not (tmp_path / "classifiers").exists()


# ----------------------------------------------------------------------------- the sweep


def test_sweep_is_seeded_and_checks_shapes(
    tiny_run: Path, digits: tuple[ImageDataset, ImageDataset], cache: Path
) -> None:
    model, _, _ = load_run(tiny_run)
    train, test = digits
    a = temperature_sweep(model, train, test, [0.0, 1.0], n=40, seed=3, cache_dir=cache)
    b = temperature_sweep(model, train, test, [0.0, 1.0], n=40, seed=3, cache_dir=cache)
    assert a["rows"] == b["rows"] and a["reference"] == b["reference"]
    assert [r["temperature"] for r in a["rows"]] == [0.0, 1.0]
    assert a["grids"][0].shape == (16, 1, 8, 8) and a["grids"][0].dtype == torch.uint8
    # Temperature 0 decodes the zero latent: every sample is the same image.
    assert (a["grids"][0] == a["grids"][0][0]).all()
    assert a["metric"] == metric_name("digits8") and "FID" not in a["metric"] and "FCD" in a["metric"]
    assert len(ROW.findall(format_table(a))) == 2
    big = ImageDataset(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ShapeError, match="16, 16"):
        temperature_sweep(model, big, big, [1.0], n=10, cache_dir=cache)
    with pytest.raises(MsflowError, match="at least 2 samples"):
        temperature_sweep(model, train, test, [1.0], n=1, cache_dir=cache)


def test_cli_end_to_end(tiny_run: Path, cache: Path, tmp_path: Path) -> None:
    png, js = tmp_path / "t.png", tmp_path / "t.json"
    temps = ["0", "0.5", "0.7", "1"]
    args = ["temperature", str(tiny_run), "--temperatures", *temps, "-n", "60", "-o", str(png), "--json", str(js)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSFLOW_CACHE": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "msflow.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert "Frechet classifier distance (FCD, msflow's 8x8-digits classifier)" in out and "FID" not in out
    assert re.search(r"test accuracy 0\.\d{4}", out)
    rows = ROW.findall(out)
    assert [float(t) for t, _ in rows] == [float(t) for t in temps]
    reference = float(REFERENCE.search(out).group(1))
    payload = json.loads(js.read_text())
    assert payload["n"] == 60 and payload["dataset"] == "digits8" and payload["run"] == str(tiny_run)
    assert payload["step"] == 4 and "checkpoint at step 4" in out
    assert [r["temperature"] for r in payload["rows"]] == [float(t) for t in temps]
    for (_, printed), row in zip(rows, payload["rows"], strict=True):
        assert math.isfinite(row["fcd"]) and row["fcd"] >= 0
        assert float(printed) == pytest.approx(row["fcd"], abs=5e-5)
    assert payload["reference"] == pytest.approx(reference, abs=5e-5)
    # A 4-step model draws noise: far from the data, while held-out real digits are close.
    assert payload["reference"] < min(r["fcd"] for r in payload["rows"])
    assert 0.5 < payload["classifier"]["test_accuracy"] <= 1
    assert Path(payload["classifier"]["path"]).parent == cache / "classifiers"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 300
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_second_run_uses_the_cache(
    tiny_run: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out_png = tmp_path / "again.png"
    argv = ["temperature", str(tiny_run), "--temperatures", "1", "-n", "30", "--cache-dir", str(cache)]
    rc, out, err = call_main([*argv, "-o", str(out_png)], capsys)
    assert rc == 0, err
    rc, out, err = call_main([*argv, "-o", str(out_png), "--force"], capsys)
    assert rc == 0, err
    assert "feature classifier (cached)" in out and len(ROW.findall(out)) == 1 and out_png.is_file()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--temperatures", "-1"], ["temperature must be in [0, 10]"]),
        (["--temperatures", "warm"], ["--temperatures"]),
        (["--temperatures"], ["--temperatures"]),
        (["-n", "0"], ["positive integer"]),
        (["-n", "1"], ["at least 2 samples"]),
        (["--inception", "pt_inception.pth"], ["torchvision", "InceptionV3", "FCD"]),
        (["--device", "tpu"], ["--device"]),
    ],
)
def test_bad_arguments_are_one_line_errors(
    tiny_run: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], needles: list[str]
) -> None:
    out = tmp_path / "t.png"
    rc, _, err = call_main(["temperature", str(tiny_run), *args, "-o", str(out), "--cache-dir", str(cache)], capsys)
    one_error_line(rc, err, *needles)
    assert not out.exists()


def test_missing_run_and_unlabelled_run(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = call_main(["temperature", str(tmp_path / "nope"), "--cache-dir", str(cache)], capsys)
    one_error_line(rc, err, "no run folder or checkpoint")
    # A run on a folder of unlabelled images: the error says how to get labels.
    root = tmp_path / "images"
    root.mkdir()
    g = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"{i:02d}.png")
    run = tmp_path / "run"
    overrides = [*TINY, "data.name=folder", f"data.root={root}", "train.steps=1", "train.batch_size=8"]
    assert main(["train", "mnist5k-glow", *overrides, "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "t.png"
    rc, _, err = call_main(["temperature", str(run), "-n", "4", "-o", str(out), "--cache-dir", str(cache)], capsys)
    one_error_line(rc, err, "no class labels", "one subfolder per class")
    assert not out.exists()
