"""Numerical accuracy and reproducibility: float64 evaluation, the invertibility check of
`msflow eval`, bit-for-bit repeatable runs from `--seed`, what every checkpoint records."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from msflow.cli import main
from msflow.metrics.invertibility import WARN_ABOVE, reconstruction_errors
from msflow.runs import load_data, load_run
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from runs import TINY, read_metrics

RUN_ARGS = ["train", "mnist5k-glow", *TINY, "train.steps=6", "train.checkpoint_every=3"]


def train_run(out: Path, *extra: str) -> Path:
    assert main([*RUN_ARGS, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Glow trained for 40 steps: far enough from its initialisation to be a real model."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=40", "--out", str(out)]) == 0
    return out


def eval_numbers(capsys: pytest.CaptureFixture, *args: str) -> tuple[float, float, str]:
    """Run `msflow eval ARGS`; returns (bits/dim, reconstruction error, stderr)."""
    capsys.readouterr()
    assert main(["eval", *args]) == 0
    out = capsys.readouterr()
    bpd = float(re.search(r"test bits/dim: (\S+)", out.out).group(1))
    error = float(re.search(r"max \|x - f\^-1\(f\(x\)\)\| = (\S+)", out.out).group(1))
    return bpd, error, out.err


# ----------------------------------------------------------------------------- float64 and invertibility


def test_float32_and_float64_bits_per_dim_of_a_trained_model_agree(trained: Path, capsys) -> None:  # noqa: ANN001
    bpd32, error32, err32 = eval_numbers(capsys, str(trained), "--dtype", "float32")
    bpd64, error64, err64 = eval_numbers(capsys, str(trained), "--dtype", "float64")
    assert abs(bpd32 - bpd64) < 1e-4
    assert bpd32 != bpd64  # two different arithmetics really ran
    assert error64 < 1e-12 < error32 < 1e-4
    assert "warning" not in err32 + err64


def test_float64_evaluation_matches_the_library_in_float64(trained: Path, capsys) -> None:  # noqa: ANN001
    model, cfg, _ = load_run(trained)
    model.double()
    data = load_data(cfg, "test")
    generator = torch.Generator().manual_seed(cfg.train.seed)
    assert len(data) <= cfg.train.eval_batch_size  # one batch, one noise draw
    with torch.inference_mode():
        expected = model.bits_per_dim(data.images, generator=generator)
    bpd, _, _ = eval_numbers(capsys, str(trained), "--dtype", "float64")
    assert expected.dtype == torch.float64
    assert bpd == pytest.approx(expected.mean().item(), abs=1e-6)


def test_eval_warns_when_a_model_does_not_invert(trained: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # A near-singular 1x1 convolution (one singular value e^-12): still invertible on paper and
    # its log-det is exact, but float32 cannot undo the map to within a pixel level.
    tensors, meta = load_checkpoint(trained / CHECKPOINT)
    for name in [k for k in tensors if k.endswith("levels.0.blocks.2.log_diag")]:
        tensors[name][0] = -12.0
    bad = tmp_path / "bad"
    bad.mkdir()
    save_checkpoint(bad / CHECKPOINT, tensors, meta)
    _, error, err = eval_numbers(capsys, str(bad))
    assert error > WARN_ABOVE
    [line] = [x for x in err.splitlines() if "warning" in x]  # the rest is the progress bar
    assert line.startswith("msflow eval: warning: the model does not invert to within 0.001")
    assert "--dtype float64" in line
    _, error64, _ = eval_numbers(capsys, str(bad), "--dtype", "float64")
    assert error64 < 1e-8  # float64 tells precision loss apart from a broken model


def test_reconstruction_errors_cover_the_requested_images(trained: Path) -> None:
    model, cfg, _ = load_run(trained)
    data = load_data(cfg, "test")
    errors = reconstruction_errors(model, data, batch_size=64, max_images=100)
    assert errors.shape == (100,) and errors.dtype == torch.float64
    assert torch.equal(errors, reconstruction_errors(model, data, batch_size=100, max_images=100))
    assert (errors > 0).any() and (errors < 1e-4).all()


def test_eval_can_skip_the_invertibility_check(trained: Path, capsys) -> None:  # noqa: ANN001
    assert main(["eval", str(trained), "--check-images", "0"]) == 0
    assert "invertibility" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- seeds and records


def test_seed_makes_a_run_repeat_bit_for_bit(tmp_path: Path) -> None:
    a, b, c = (train_run(tmp_path / name, "--seed", seed) for name, seed in (("a", "7"), ("b", "7"), ("c", "8")))
    (ta, ma), (tb, mb), (tc, _) = (load_checkpoint(r / CHECKPOINT) for r in (a, b, c))
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert (ma["results"]["bpd"], ma["results"]["bpd_stderr"]) == (mb["results"]["bpd"], mb["results"]["bpd_stderr"])
    losses = [[r["loss_bpd"] for r in read_metrics(run) if "loss_bpd" in r] for run in (a, b, c)]
    assert losses[0] == losses[1] != losses[2]
    assert not torch.equal(ta["model/levels.0.blocks.3.net.0.weight"], tc["model/levels.0.blocks.3.net.0.weight"])
    assert (a / "samples" / "final_t0.70.png").read_bytes() == (b / "samples" / "final_t0.70.png").read_bytes()


def test_every_checkpoint_records_seed_versions_and_config(tmp_path: Path) -> None:
    import platform

    import numpy
    import safetensors

    import msflow

    try:
        run = train_run(tmp_path / "run", "--seed", "5", "--deterministic")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)  # a process-wide switch: leave the other tests alone
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["seed"] == 5 and meta["config"]["train"]["seed"] == 5
    assert meta["config"]["train"]["deterministic"] is True
    assert meta["config"]["model"]["name"] == "glow-mnist"
    assert meta["versions"] == {
        "msflow": msflow.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
