"""Edge cases found in review: numerics at the extremes, resume with changed settings, odd input."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny import TINY

from msflow.cli import main
from msflow.errors import ConfigError
from msflow.metrics import mean_and_stderr
from msflow.train.checkpoint import CHECKPOINT
from msflow.train.config import apply_overrides, load_config
from msflow.train.ema import EMA
from msflow.train.loop import train
from msflow.train.recipe import build_model
from msflow.train.run_state import _resume
from msflow.transforms import ActNorm, Affine, InvConv1x1, Logit, UniformDequantize


def test_logit_log_det_stays_finite_where_sigmoid_saturates() -> None:
    z = torch.tensor([[[[20.0, -20.0, 40.0]]]])
    logit = Logit(0.05)
    _, logdet = logit.inverse(z)
    # -log s - log(1 - s) at s = sigmoid(z) is softplus(z) + softplus(-z), about |z| for large |z|.
    exact = sum(math.log(0.9) + abs(v) + math.log1p(math.exp(-abs(v))) for v in (20.0, -20.0, 40.0))
    assert torch.isfinite(logdet).all()
    assert logdet.item() == pytest.approx(-exact, rel=1e-6)


def test_dequantized_values_never_touch_the_bin_edges() -> None:
    deq = UniformDequantize(8)
    x = torch.zeros(1, 1, 4096, 4096, dtype=torch.uint8)
    v, _ = deq(x, generator=torch.Generator().manual_seed(0))
    assert (v > 0).all() and (v < 1 / 256).all()
    # Logit with alpha 0 is then finite on every draw.
    z, logdet = Logit(0.0)(v[:, :, :64, :64])
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()


@pytest.mark.parametrize("block", [ActNorm(3), InvConv1x1(3)], ids=["actnorm", "conv1x1"])
def test_log_det_is_a_real_tensor_not_a_broadcast_view(block) -> None:
    _, logdet = block(torch.randn(4, 3, 2, 2))
    logdet += 1.0  # an expanded view would refuse this in-place update
    assert logdet.shape == (4,)


def test_empty_inputs() -> None:
    assert Affine()(torch.zeros(0, 1, 2, 2))[1].shape == (0,)
    with pytest.raises(ValueError, match="empty"):
        mean_and_stderr(torch.zeros(0))


def test_booleans_in_number_lists_are_refused() -> None:
    with pytest.raises(ConfigError, match="list of numbers"):
        apply_overrides(load_config("mnist5k-glow"), ["train.temperatures=[0.5, true]"])


def _run(tmp_path: Path, *extra: str):
    return apply_overrides(load_config("mnist5k-glow"), [*TINY, f"train.out={tmp_path / 'run'}", *extra])


def test_resume_with_ema_switched_on_starts_the_average_from_the_loaded_weights(tmp_path: Path) -> None:
    train(_run(tmp_path, "train.steps=3", "optim.ema_decay=0"))
    cfg = _run(tmp_path, "train.steps=4", "optim.ema_decay=0.9")
    model = build_model(cfg, torch.device("cpu"))
    ema = EMA(model, 0.9)  # holds the random initial weights
    opt = torch.optim.Adam(model.parameters())
    step, _ = _resume(tmp_path / "run" / CHECKPOINT, cfg, model, opt, ema, torch.Generator())
    assert step == 3
    for name, value in model.state_dict().items():
        assert torch.equal(ema.shadow[name], value), name


def test_resume_applies_the_configs_betas_and_weight_decay(tmp_path: Path, monkeypatch) -> None:
    train(_run(tmp_path, "train.steps=2", "train.checkpoint_every=1"))
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append((tuple(self.param_groups[0]["betas"]), self.param_groups[0]["weight_decay"]))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    train(
        _run(tmp_path, "train.steps=3", "train.checkpoint_every=1", "optim.betas=[0.5, 0.9]", "optim.weight_decay=0.01")
    )
    assert seen == [((0.5, 0.9), 0.01)]


def test_an_output_path_that_is_a_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    train(_run(tmp_path, "train.steps=1"))
    folder = tmp_path / "a_folder"
    folder.mkdir()
    code = main(["sample", str(tmp_path / "run"), "-n", "2", "-o", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "error" in err[0]
