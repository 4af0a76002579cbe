"""The ``msflow`` command: real subprocesses on tiny real data, and user errors.

Every user error must end as one line on stderr (``msflow CMD: error: ...``), exit code 2, no
traceback, and no half-written run folder or output file.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY as TINY_BASE

from msflow.cli import main
from msflow.models import list_models
from msflow.runs import load_data, load_run
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.evaluate import evaluate

TINY = TINY_BASE
# mnist5k at 28x28 with a tiny Glow, for the shape errors
TINY_MNIST = ["model.options.steps=1", "model.options.hidden=8", "train.steps=2", "train.progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
BPD_LINE = re.compile(r"^(test|train) bits/dim: (\d+\.\d{6}) \+- (\d+\.\d{6}) \((\d+) ", re.M)


def msflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "msflow.cli", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=240
    )


def call_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``msflow.cli.main`` in-process; an escaping exception counts as exit 1 with its traceback."""
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    except Exception:  # noqa: BLE001 - a crash is what these tests look for
        rc = 1
        traceback.print_exc()
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, command: str, *needles: str) -> str:
    """Exit code 2, no traceback, one ``msflow COMMAND: error:`` line (argument errors included)."""
    assert "Traceback" not in err, err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"msflow {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def parse_bpd(text: str) -> float:
    match = BPD_LINE.search(text)
    assert match, text
    return float(match.group(2))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny run trained by the real command; returns (run folder, its stdout)."""
    tmp = tmp_path_factory.mktemp("cli")
    run = tmp / "run"
    proc = msflow(
        "train", "mnist5k-glow", *TINY, "train.steps=6", "train.checkpoint_every=3", "--out", str(run), cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return run, proc.stdout


@pytest.fixture
def run_copy(trained_run: tuple[Path, str], tmp_path: Path) -> Path:
    """A private copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained_run[0], tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- happy paths


def test_train_prints_results_and_writes_the_run(trained_run: tuple[Path, str]) -> None:
    run, stdout = trained_run
    assert f"run folder: {run}" in stdout
    assert "359 test images of digits8" in stdout
    assert "samples: " in stdout and str(run / "samples" / "final_t0.70.png") in stdout
    assert abs(parse_bpd(stdout) - json.loads((run / "results.json").read_text())["bpd"]) <= 5e-7
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["step"] == 6
    assert not [p for p in run.rglob("*.tmp")]


def test_eval_reproduces_the_bits_per_dim_of_training(trained_run: tuple[Path, str]) -> None:
    run, train_stdout = trained_run
    proc = msflow("eval", str(run), cwd=run.parent)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert abs(parse_bpd(proc.stdout) - parse_bpd(train_stdout)) <= 1e-6
    assert BPD_LINE.search(proc.stdout).group(0) == BPD_LINE.search(train_stdout).group(0)

    # results.json holds the full-precision value; evaluating the stored model in-process agrees
    stored = json.loads((run / "results.json").read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the training subprocess ran with one thread
    try:
        model, cfg, meta = load_run(run)
        result = evaluate(model, load_data(cfg, "test"), cfg.train.eval_batch_size, seed=cfg.train.seed)
    finally:
        torch.set_num_threads(threads)
    assert result["n"] == stored["n"] == 359
    assert abs(result["bpd"] - stored["bpd"]) <= 1e-6
    assert abs(result["bpd_stderr"] - stored["bpd_stderr"]) <= 1e-6
    assert meta["results"]["bpd"] == stored["bpd"]


def test_eval_options(trained_run: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    run, _ = trained_run
    rc, out, err = call_main(
        ["eval", str(run / CHECKPOINT), "--split", "train", "--batch-size", "700", "--seed", "3"], capsys
    )
    assert rc == 0, err
    match = BPD_LINE.search(out)
    assert match and match.group(1) == "train" and match.group(4) == "1438"
    assert "dequantization seed 3" in out


def test_sample_writes_a_png(trained_run: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = trained_run
    out = tmp_path / "x.png"
    proc = msflow("sample", str(run), "-n", "4", "--temperature", "0.7", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 4 samples at temperature 0.7 to {out}" in proc.stdout
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        # 2x2 grid of 8x8 images with 2-pixel borders (22 px), enlarged 96 // 8 = 12 times
        assert image.size == (264, 264)
        pixels = np.asarray(image)
    assert pixels.min() < pixels.max()  # not a blank image
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_sample_is_seeded_and_makes_folders(
    trained_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run, _ = trained_run
    a, b, c = tmp_path / "a.png", tmp_path / "new" / "dir" / "b.png", tmp_path / "c.png"
    assert call_main(["sample", str(run), "-n", "9", "-t", "0.5", "--seed", "1", "-o", str(a)], capsys)[0] == 0
    assert call_main(["sample", str(run), "-n", "9", "-t", "0.5", "--seed", "1", "-o", str(b)], capsys)[0] == 0
    assert call_main(["sample", str(run), "-n", "9", "-t", "0.5", "--seed", "2", "-o", str(c)], capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    with Image.open(a) as image:
        assert image.size == (32 * 12, 32 * 12)  # 3x3 grid


def test_list_filters_by_declared_capabilities(capsys: pytest.CaptureFixture) -> None:
    def listed(*flags: str) -> dict[str, list[str]]:
        rc, out, _ = call_main(["list", *flags], capsys)
        assert rc == 0
        lines = out.splitlines()
        models = lines[1 : lines.index("datasets:")]
        return {line.split()[0]: line.split()[1:3] for line in models}

    everything, superres = listed(), listed("--task", "superres")
    assert set(superres) == set(list_models(task="superres")) and "cflow-sr4" in superres
    assert all(kind[0] == "superres" for kind in superres.values())
    assert set(listed("--conditional")) == set(list_models(conditional=True))
    unconditional = listed("--unconditional")
    assert "glow-mnist" in unconditional and everything["glow-mnist"][0] == "density"
    assert set(unconditional) | set(listed("--conditional")) == set(everything)
    cnf = listed("--cnf")
    assert set(cnf) == set(list_models(cnf=True)) and "mrcnf-mnist5k" in cnf and cnf["mrcnf-mnist5k"][1] == "cnf"


def test_list_shows_models_and_datasets(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("msflow")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "msflow.cli"]
    proc = subprocess.run([*command, "list"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("models (kind:") and "datasets:" in lines
    models = lines[1 : lines.index("datasets:")]
    tasks = next(i for i, line in enumerate(lines) if line.startswith("image-to-image tasks"))
    datasets = [line.strip() for line in lines[lines.index("datasets:") + 1 : tasks]]
    assert lines[tasks].endswith("sr2, sr4, colorize, inpaint, sketch, segment") and "folder" in lines[tasks + 1]
    for name in ("glow-mnist", "glow-cifar10", "realnvp-mnist"):
        assert any(line.split()[0] == name for line in models), name
    assert any("1x28x28" in line for line in models)
    for name in ("mnist5k", "digits8", "patches32", "cifar10", "folder"):
        assert name in datasets


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    rc, _, err = call_main([], capsys)
    assert rc == 2 and err.strip().splitlines() == [
        "msflow: error: the following arguments are required: command (see `msflow --help`)"
    ]


# ----------------------------------------------------------------------------- bad input (subprocess)


def test_image_size_that_cannot_be_squeezed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = msflow(
        "train",
        "mnist5k-glow",
        *TINY_MNIST,
        "model.name=glow-mnist",
        "model.options.levels=3",
        "--out",
        str(run),
        cwd=tmp_path,
    )
    assert_user_error(proc.returncode, proc.stderr, "train", "28x28", "pad to 32")
    assert not run.exists()


def test_wrong_channel_count_names_the_shapes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = msflow("train", "mnist5k-glow", *TINY_MNIST, "model.name=glow-cifar10", "--out", str(run), cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "train", "1x28x28", "3x32x32", "mnist5k", "glow-cifar10")
    assert not run.exists()


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_dataset_folder(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "images"
    if kind == "empty":
        root.mkdir()
    run = tmp_path / "run"
    proc = msflow(
        "train", "mnist5k-glow", *TINY, "data.name=folder", f"data.root={root}", "--out", str(run), cwd=tmp_path
    )
    line = assert_user_error(proc.returncode, proc.stderr, "train", str(root))
    assert ("does not exist" if kind == "missing" else "is empty") in line
    assert not run.exists()


def _image_folder(root: Path, n: int = 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / f"img{i:02d}.png")


def test_corrupt_image_in_folder_dataset_is_named(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _image_folder(root)
    (root / "broken.png").write_bytes(b"this is not a png at all")
    run = tmp_path / "run"
    proc = msflow(
        "train", "mnist5k-glow", *TINY, "data.name=folder", f"data.root={root}", "--out", str(run), cwd=tmp_path
    )
    assert_user_error(proc.returncode, proc.stderr, "train", str(root / "broken.png"), "cannot read image")
    assert not run.exists()


def test_truncated_image_in_folder_dataset_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "images"
    _image_folder(root)
    data = (root / "img07.png").read_bytes()
    (root / "img07.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    run = tmp_path / "run"
    rc, _, err = call_main(
        ["train", "mnist5k-glow", *TINY, "data.name=folder", f"data.root={root}", "--out", str(run)], capsys
    )
    assert_user_error(rc, err, "train", str(root / "img07.png"))
    assert not run.exists()


def test_training_into_a_run_of_another_model(run_copy: Path) -> None:
    before = snapshot(run_copy)
    proc = msflow(
        "train",
        "mnist5k-glow",
        *TINY,
        "train.steps=8",
        "model.options.hidden=16",
        "--out",
        str(run_copy),
        cwd=run_copy.parent,
    )
    assert_user_error(proc.returncode, proc.stderr, "train", "different model config", str(run_copy / CHECKPOINT))
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_offered_as_checkpoint_is_not_unpickled(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "UNPICKLED"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (Path.write_text, (marker, "code ran"))

    path = tmp_path / "model.ckpt"
    if writer == "torch.save":
        torch.save({"state_dict": Payload()}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    out = tmp_path / "samples.png"
    if writer == "torch.save":
        proc = msflow("eval", str(path), cwd=tmp_path)
        assert_user_error(proc.returncode, proc.stderr, "eval", "not a safetensors checkpoint", "never unpickles")
    else:
        proc = msflow("sample", str(path), "-n", "2", "-o", str(out), cwd=tmp_path)
        assert_user_error(proc.returncode, proc.stderr, "sample", "not a safetensors checkpoint", "never unpickles")
    assert not marker.exists()
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("train.stepz=5", ["unknown config key", "train.stepz", "train.steps"]),
        ("train.steps=abc", ["train.steps must be of type int", "'abc'"]),
        ("optim.optimizer=sgd", ["optim.optimizer must be one of adam, adamax", "'sgd'"]),
    ],
)
def test_bad_config_values(tmp_path: Path, override: str, needles: list[str]) -> None:
    run = tmp_path / "run"
    proc = msflow("train", "mnist5k-glow", *TINY, override, "--out", str(run), cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "train", *needles)
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-n", "0"], "must be a number of samples in [1, 10000], got 0"),
        (["--temperature", "-1"], "temperature must be in [0, 10], got -1"),
    ],
)
def test_out_of_range_sample_arguments(
    trained_run: tuple[Path, str], tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "x.png"
    proc = msflow("sample", str(trained_run[0]), *args, "-o", str(out), cwd=tmp_path)
    assert_user_error(proc.returncode, proc.stderr, "sample", needle)
    assert not out.exists()


# ----------------------------------------------------------------------------- bad input (in-process)


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "-3"],
        ["-n", "many"],
        ["--temperature", "11"],
        ["--temperature", "nan"],
        ["--temperature", "inf"],
        ["--device", "tpu"],
    ],
)
def test_more_bad_sample_arguments(trained_run: tuple[Path, str], tmp_path: Path, capsys, args: list[str]) -> None:  # noqa: ANN001
    out = tmp_path / "x.png"
    rc, _, err = call_main(["sample", str(trained_run[0]), *args, "-o", str(out)], capsys)
    assert_user_error(rc, err, "sample")
    assert not out.exists()


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--split", "validation"]])
def test_bad_eval_arguments(trained_run: tuple[Path, str], capsys, args: list[str]) -> None:  # noqa: ANN001
    rc, _, err = call_main(["eval", str(trained_run[0]), *args], capsys)
    assert_user_error(rc, err, "eval")


def test_eval_of_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = call_main(["eval", str(tmp_path / "runs" / "nope")], capsys)
    assert_user_error(rc, err, "eval", "no run folder or checkpoint")
    rc, _, err = call_main(["eval", str(tmp_path)], capsys)
    assert_user_error(rc, err, "eval", "no checkpoint at")


def test_unknown_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = call_main(["train", "no-such-config", "--out", str(tmp_path / "run")], capsys)
    assert_user_error(rc, err, "train", "not found", "mnist5k-glow")
    assert not (tmp_path / "run").exists()


def test_dashed_overrides_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    dashed = [f"--{item.replace('=', ' ', 1)}" for item in TINY]
    argv = ["train", "mnist5k-glow", *" ".join(dashed).split(" "), "--train.steps", "2", "--train.checkpoint_every=1"]
    rc, out, err = call_main([*argv, "--out", str(run)], capsys)
    assert rc == 0, err
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["step"] == 2 and meta["config"]["train"]["checkpoint_every"] == 1
    assert meta["config"]["model"]["options"]["hidden"] == 8


def test_overrides_after_the_out_option(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``msflow train CFG --out DIR key=value`` must read key=value as an override, not reject it."""
    run = tmp_path / "run"
    rc, _, err = call_main(["train", "mnist5k-glow", "--out", str(run), "optim.optimizer=sgd"], capsys)
    assert_user_error(rc, err, "train", "optim.optimizer must be one of")
    assert not run.exists()


@pytest.mark.parametrize("folder", ["2024", "run #1"])
def test_out_folder_name_is_taken_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, folder: str
) -> None:
    """``--out`` is a path: not parsed as YAML (``2024`` is an int, ``#`` starts a comment)."""
    monkeypatch.chdir(tmp_path)
    rc, _, err = call_main(["train", "mnist5k-glow", *TINY, "train.steps=1", "--out", folder], capsys)
    assert rc == 0, err
    assert (tmp_path / folder / CHECKPOINT).is_file()


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=.nan",
        "optim.betas=[1.5,0.9]",
        "optim.weight_decay=-1",
        "model.options.levels=0",
    ],
)
def test_bad_values_that_reach_torch_are_user_errors(tmp_path: Path, capsys, override: str) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    rc, _, err = call_main(["train", "mnist5k-glow", *TINY, "train.steps=2", override, "--out", str(run)], capsys)
    assert_user_error(rc, err, "train")
    assert not run.exists(), sorted(p.name for p in run.iterdir())


def test_yaml_list_as_config_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- steps\n")
    rc, _, err = call_main(["train", str(path), "--out", str(tmp_path / "run")], capsys)
    assert_user_error(rc, err, "train", "list.yaml")
    assert not (tmp_path / "run").exists()
