"""CAFLOW's learning-rate recipe: the ``step`` schedule (PyTorch's StepLR after a warm-up) and
the one-time drop when the training loss levels off, alone, in training, over a resume and
together with the roll-back's learning-rate scale."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import msflow.train.loop as loop
from msflow.errors import CheckpointError, ConfigError
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.config import Config, apply_overrides, config_from_dict
from msflow.train.loop import train
from msflow.train.plateau import SMOOTHING, Plateau
from msflow.train.recipe import learning_rate
from runs import read_metrics, tiny_config

# ----------------------------------------------------------------------------- the step schedule


def _step_config(**optim: float) -> Config:
    values = {"lr": 1e-2, "warmup_steps": 10, "schedule": "step", "decay_rate": 0.5, "decay_steps": 7, **optim}
    return config_from_dict({"optim": values, "train": {"steps": 1000}})


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-3),  # warm-up: lr * (step + 1) / warmup_steps
        (4, 5e-3),
        (9, 1e-2),
        (10, 1e-2),  # u = step - warmup = 0
        (16, 1e-2),  # u = 6: still the first period
        (17, 5e-3),  # u = 7: one decay
        (23, 5e-3),
        (24, 2.5e-3),
        (31, 1.25e-3),
        (38, 1e-3),  # 6.25e-4 is below min_lr
        (10_000, 1e-3),
    ],
)
def test_step_schedule_is_the_formula(step: int, expected: float) -> None:
    cfg = _step_config(min_lr=1e-3)
    assert learning_rate(cfg, step) == pytest.approx(expected, rel=1e-12)
    if step >= 10:
        formula = max(1e-3, 1e-2 * 0.5 ** math.floor((step - 10) / 7))
        assert learning_rate(cfg, step) == pytest.approx(formula, rel=1e-12)


def test_step_schedule_follows_torch_steplr_after_the_warmup() -> None:
    cfg = _step_config(decay_rate=0.9, decay_steps=3)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
    steplr = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.9)
    for u in range(40):
        assert learning_rate(cfg, 10 + u) == pytest.approx(steplr.get_last_lr()[0], rel=1e-12), u
        opt.step()
        steplr.step()


def test_caflow_recipe_warms_up_over_500_steps_then_decays_by_0_999_per_step() -> None:
    cfg = config_from_dict(
        {"optim": {"lr": 1e-3, "warmup_steps": 500, "schedule": "step", "decay_rate": 0.999, "decay_steps": 1}}
    )
    assert learning_rate(cfg, 0) == pytest.approx(1e-3 / 500)
    assert learning_rate(cfg, 249) == pytest.approx(0.5e-3)
    assert learning_rate(cfg, 499) == learning_rate(cfg, 500) == pytest.approx(1e-3)
    assert learning_rate(cfg, 1500) == pytest.approx(1e-3 * 0.999**1000, rel=1e-12)


# ----------------------------------------------------------------------------- validation


def test_defaults_leave_the_plateau_drop_off() -> None:
    o = Config().optim
    assert (o.plateau_patience, o.plateau_factor, o.plateau_threshold) == (0, 0.1, 1e-3)
    cfg = apply_overrides(Config(), ["optim.plateau_patience=500", "optim.plateau_threshold=1e-2"])
    assert (cfg.optim.plateau_patience, cfg.optim.plateau_threshold) == (500, 0.01)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.schedule=steplr", "optim.schedule must be one of constant, cosine, exponential, step, got 'steplr'"),
        ("optim.plateau_factor=0", r"optim.plateau_factor must be a number in \(0, 1\), got 0.0"),
        ("optim.plateau_factor=1", r"optim.plateau_factor must be a number in \(0, 1\), got 1.0"),
        ("optim.plateau_factor=10", r"optim.plateau_factor must be a number in \(0, 1\), got 10.0"),
        ("optim.plateau_factor=.nan", r"optim.plateau_factor must be a number in \(0, 1\), got nan"),
        ("optim.plateau_threshold=-0.1", "optim.plateau_threshold must be a finite number >= 0, got -0.1"),
        ("optim.plateau_threshold=.inf", "optim.plateau_threshold must be a finite number >= 0, got inf"),
        ("optim.plateau_patience=-1", "optim.plateau_patience must be an integer >= 0 \\(0 means never\\), got -1"),
        ("optim.plateau_patience=2.5", "optim.plateau_patience must be of type int, got 2.5"),
    ],
)
def test_bad_recipe_values_are_refused_naming_the_valid_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


# ----------------------------------------------------------------------------- the plateau alone


def _drops(plateau: Plateau, losses: list[float]) -> list[int]:
    """The steps (counted from 1) at which ``plateau`` dropped the learning rate."""
    return [step for step, loss in enumerate(losses, 1) if plateau.update(loss, step)]


def test_loss_that_decreases_then_flattens_drops_once_patience_steps_after_the_last_improvement() -> None:
    decreasing = [2.0 - 0.1 * t for t in range(10)]  # every step improves the smoothed loss
    smoothed = decreasing[0]
    for loss in decreasing[1:]:
        smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * loss
    losses = decreasing + [smoothed] * 40  # from step 11 the smoothed loss stays where it is
    plateau = Plateau(patience=5, factor=0.1, threshold=1e-4)
    assert _drops(plateau, losses) == [15]  # steps 11-15 are the 5 steps without improvement
    assert (plateau.drop_step, plateau.scale, plateau.since) == (15, 0.1, 5)
    assert not plateau.active
    # the state is frozen at the drop
    assert plateau.state_dict() == {
        "smoothed": pytest.approx(smoothed),
        "best": plateau.best,
        "since": 5,
        "drop_step": 15,
    }


def test_a_lagging_average_delays_the_drop_but_it_still_comes_once() -> None:
    losses = [3.0 - 0.02 * t for t in range(50)] + [1.0] * 1000  # the average reaches 1.0 only slowly
    plateau = Plateau(patience=20, factor=0.5, threshold=1e-3)
    [drop] = _drops(plateau, losses)
    assert drop > 50 + 20 and plateau.scale == 0.5


def test_noisy_but_improving_loss_never_drops() -> None:
    rng = random.Random(0)
    # a slope of 2e-3 per step under noise of +-0.2, crossing zero (negative losses, as in nats)
    losses = [3.0 - 2e-3 * t + rng.uniform(-0.2, 0.2) for t in range(3000)]
    assert min(b - a for a, b in zip(losses, losses[1:], strict=False)) < -0.1  # steps often get worse
    assert max(b - a for a, b in zip(losses, losses[1:], strict=False)) > 0.1
    plateau = Plateau(patience=50, factor=0.1, threshold=1e-3)
    assert _drops(plateau, losses) == []
    assert plateau.scale == 1.0 and plateau.best < -2.5


def test_patience_zero_never_drops_and_tracks_nothing() -> None:
    plateau = Plateau(patience=0)
    assert _drops(plateau, [1.0] * 500) == []
    assert plateau.scale == 1.0 and plateau.state_dict() == Plateau().state_dict()


def test_state_round_trips_and_bad_state_is_refused() -> None:
    plateau = Plateau(patience=3)
    _drops(plateau, [1.0, 0.5, 0.5])
    again = Plateau(patience=3)
    again.load_state_dict(json.loads(json.dumps(plateau.state_dict())), "ckpt")
    assert again == plateau
    for bad in [[], {"since": 1}, {**plateau.state_dict(), "since": -1}, {**plateau.state_dict(), "best": "x"}]:
        with pytest.raises(CheckpointError, match="ckpt has metadata plateau"):
            Plateau(patience=3).load_state_dict(bad, "ckpt")


# ----------------------------------------------------------------------------- in training

# A threshold no smoothed loss can beat within a few steps (it moves 2% of the way per step):
# the drop comes exactly ``patience`` steps after the first, whatever the losses.
_RECIPE = ["optim.plateau_patience=3", "optim.plateau_factor=0.1", "optim.plateau_threshold=0.5", "train.num_samples=0"]


def _lrs(run: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in read_metrics(run) if "lr" in r}


def test_training_drops_the_logged_lr_by_the_factor_exactly_once(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, "train.steps=10", "optim.warmup_steps=2", "optim.schedule=step", "optim.decay_steps=4")
    result = train(apply_overrides(cfg, _RECIPE))
    lrs = _lrs(run)
    # the step-s record ran with the schedule of step s - 1; steps 1-4 before the drop at step 4
    expected = {s: learning_rate(cfg, s - 1) * (0.1 if s > 4 else 1.0) for s in range(1, 11)}
    assert lrs == pytest.approx(expected, rel=1e-12)
    falls = {s + 1: lrs[s + 1] / lrs[s] for s in range(1, 10) if lrs[s + 1] < lrs[s]}
    assert falls == {5: pytest.approx(0.1), 7: pytest.approx(0.98)}  # the drop, then StepLR's decay
    [event] = [r for r in read_metrics(run) if r.get("event") == "lr_drop"]
    assert event["step"] == 4 and event["factor"] == 0.1
    assert result["lr_drop_step"] == 4
    assert json.loads((run / "results.json").read_text())["lr_drop_step"] == 4
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["plateau"]["drop_step"] == 4 and meta["lr_scale"] == 1.0
    assert "step 4: the smoothed training loss has not improved for 3 steps" in capsys.readouterr().out


def test_training_without_the_drop_keeps_the_schedule_and_results(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, "train.steps=6", "train.num_samples=0")
    result = train(cfg)
    assert _lrs(run) == pytest.approx({s: learning_rate(cfg, s - 1) for s in range(1, 7)})
    assert "lr_drop_step" not in result
    assert not [r for r in read_metrics(run) if r.get("event") == "lr_drop"]


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("at", [4, 8])  # before the drop (mid-count), after it
def test_resumed_run_drops_like_an_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    overrides = ["train.steps=12", "train.checkpoint_every=3", *_RECIPE]
    train(tiny_config(tmp_path / "whole", *overrides))

    run = tmp_path / "resumed"
    real = loop.learning_rate

    def interrupt(cfg: Config, step: int) -> float:
        if step == at:  # steps 1..at done; the last checkpoint is at step 3 or 6
            raise _Interrupt
        return real(cfg, step)

    monkeypatch.setattr(loop, "learning_rate", interrupt)
    with pytest.raises(_Interrupt):
        train(tiny_config(run, *overrides))
    _, meta = load_checkpoint(run / CHECKPOINT)
    saved = meta["plateau"]
    assert (meta["step"], saved["since"], saved["drop_step"]) == ((3, 2, None) if at == 4 else (6, 3, 4))
    monkeypatch.setattr(loop, "learning_rate", real)
    train(tiny_config(run, *overrides))

    assert _lrs(run) == _lrs(tmp_path / "whole")
    losses = [(r["step"], r["loss_bpd"]) for r in read_metrics(run) if "loss_bpd" in r]
    assert losses == [(r["step"], r["loss_bpd"]) for r in read_metrics(tmp_path / "whole") if "loss_bpd" in r]
    _, meta = load_checkpoint(run / CHECKPOINT)
    _, whole = load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    assert meta["plateau"] == whole["plateau"] and meta["plateau"]["drop_step"] == 4
    assert [r["step"] for r in read_metrics(run) if r.get("event") == "lr_drop"] == [4]


def test_roll_back_past_the_drop_keeps_it_and_multiplies_the_scales(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build, calls = loop.build_model, [0]

    def build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
        model = real_build(cfg, device)
        real_bpd = model.bits_per_dim

        def bits_per_dim(x, cond=None, generator=None):  # noqa: ANN001, ANN202
            out = real_bpd(x, cond, generator)
            if model.training:
                calls[0] += 1
                if calls[0] in (5, 6):  # steps 5 and 6 are NaN: at step 6 a roll-back to step 3
                    return out + float("nan")
            return out

        model.bits_per_dim = bits_per_dim
        return model

    monkeypatch.setattr(loop, "build_model", build_model)
    run = tmp_path / "run"
    cfg = tiny_config(run, "train.steps=10", "train.checkpoint_every=3", "optim.max_bad_steps=2", *_RECIPE)
    train(cfg)
    [rollback] = [r for r in read_metrics(run) if r.get("event") == "rollback"]
    assert (rollback["step"], rollback["to_step"]) == (6, 3)
    # step 3's checkpoint predates the drop at step 4; the redone steps do not drop again
    assert [r["step"] for r in read_metrics(run) if r.get("event") == "lr_drop"] == [4]
    lrs = _lrs(run)  # the last record of each step: the redone one for steps 4-5
    assert lrs[3] == pytest.approx(learning_rate(cfg, 2))
    for step in range(4, 11):
        assert lrs[step] == pytest.approx(learning_rate(cfg, step - 1) * 0.1 * 0.5), step
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["lr_scale"] == 0.5 and meta["plateau"]["drop_step"] == 4
