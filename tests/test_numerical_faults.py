"""Numerical faults: the non-finite step guard, roll-back with a lower learning rate, and the
refusal to write a checkpoint holding NaN or infinite values."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import msflow.train.loop as loop
from msflow.errors import MsflowError
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.config import Config
from msflow.train.ema import EMA
from msflow.train.loop import TrainingDiverged, train
from runs import read_metrics, tiny_config

# ----------------------------------------------------------------------------- non-finite guard


class _Spy:
    """Wraps ``build_model``/``EMA``/``learning_rate`` of the loop to watch and sabotage training."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, bad_steps: set[int] | str, kind: str = "loss") -> None:
        self.bad_steps, self.kind = bad_steps, kind
        self.model: torch.nn.Module | None = None
        self.ema: EMA | None = None
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.shadow: dict[int, dict[str, torch.Tensor]] = {}
        self.history: list[tuple[int, dict[str, torch.Tensor], float]] = []  # (step, weights, lr), in order
        self.written: list[tuple[int, bool]] = []  # (step, all values finite) of each checkpoint write
        self.before_step: dict[int, Callable[[], None]] = {}  # sabotage run before step s + 1, once
        self.calls = 0
        real_build, real_lr, real_save = loop.build_model, loop.learning_rate, loop.save_checkpoint
        spy = self

        def build_model(cfg: Config, device: torch.device) -> torch.nn.Module:
            model = real_build(cfg, device)
            real_bpd = model.bits_per_dim

            def bits_per_dim(x, cond=None, generator=None):  # noqa: ANN001, ANN202
                out = real_bpd(x, cond, generator)
                if not model.training:
                    return out
                spy.calls += 1
                if spy.bad_steps == "all" or spy.calls in spy.bad_steps:
                    if spy.kind == "loss":
                        return out + float("nan")
                    param = next(model.parameters())
                    zero = param.sum() - param.sum().detach()  # 0, with gradient 1
                    return out + 0.0 * torch.sqrt(zero)  # finite value, NaN gradient
                return out

            model.bits_per_dim = bits_per_dim
            spy.model = model
            return model

        class SpyEMA(EMA):
            def __init__(self, model: torch.nn.Module, decay: float) -> None:
                super().__init__(model, decay)
                spy.ema = self

        def learning_rate(cfg: Config, step: int) -> float:
            spy.weights[step] = {k: v.detach().clone() for k, v in spy.model.state_dict().items()}
            spy.shadow[step] = {k: v.detach().clone() for k, v in spy.ema.state_dict().items()}
            spy.history.append((step, spy.weights[step], real_lr(cfg, step)))
            if step in spy.before_step:
                spy.before_step.pop(step)()
            return real_lr(cfg, step)

        def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
            finite = all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
            spy.written.append((meta["step"], bool(finite)))
            real_save(path, tensors, meta)

        monkeypatch.setattr(loop, "build_model", build_model)
        monkeypatch.setattr(loop, "EMA", SpyEMA)
        monkeypatch.setattr(loop, "learning_rate", learning_rate)
        monkeypatch.setattr(loop, "save_checkpoint", save_checkpoint)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_step_is_skipped_and_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    spy = _Spy(monkeypatch, {3}, kind)
    cfg = tiny_config(tmp_path / "run", "train.steps=5", "train.checkpoint_every=100")
    result = train(cfg)
    assert math.isfinite(result["bpd"])

    # weights[s] is the state after s steps: step 3 changed nothing (weights, EMA), the others did
    assert _same(spy.weights[2], spy.weights[3]) and _same(spy.shadow[2], spy.shadow[3])
    assert not _same(spy.weights[1], spy.weights[2]) and not _same(spy.weights[3], spy.weights[4])
    assert not _same(spy.shadow[3], spy.shadow[4])

    events = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "skipped_non_finite_step"]
    assert len(events) == 1 and events[0]["step"] == 3 and events[0]["in_a_row"] == 1
    assert events[0]["loss"] is None if kind == "loss" else math.isfinite(events[0]["loss"])  # NaN is logged as null
    tensors, _ = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert tensors["optim/0/step"].item() == 4  # the optimizer took 4 of the 5 steps
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_training_diverges_after_max_bad_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch, "all")
    cfg = tiny_config(
        tmp_path / "run", "train.steps=20", "train.checkpoint_every=2", "optim.max_bad_steps=4", "optim.max_rollbacks=0"
    )
    with pytest.raises(TrainingDiverged, match="4 steps in a row.*lower optim.lr") as err:
        train(cfg)
    assert isinstance(err.value, MsflowError)
    assert spy.calls == 4
    events = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "skipped_non_finite_step"]
    assert [(e["step"], e["in_a_row"]) for e in events] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    # the checkpoints of step 2 and 4 held untrained but finite weights; none is non-finite
    if (tmp_path / "run" / CHECKPOINT).exists():
        tensors, _ = load_checkpoint(tmp_path / "run" / CHECKPOINT)
        assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_bad_steps_must_be_consecutive_to_diverge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _Spy(monkeypatch, {1, 2, 4, 5, 7, 8})
    cfg = tiny_config(tmp_path / "run", "train.steps=9", "train.checkpoint_every=100", "optim.max_bad_steps=3")
    train(cfg)
    events = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "skipped_non_finite_step"]
    assert [e["in_a_row"] for e in events] == [1, 2, 1, 2, 1, 2]


# ----------------------------------------------------------------------------- roll-back


def _events(run: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(run) if r.get("event") == name]


def test_bad_steps_in_a_row_roll_back_to_the_last_checkpoint_with_a_lower_lr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch, {5, 6, 7})  # forward passes 5-7 (steps 5-7) are NaN, then all is well
    run = tmp_path / "run"
    cfg = tiny_config(run, "train.steps=10", "train.checkpoint_every=4", "optim.max_bad_steps=3")
    result = train(cfg)
    assert math.isfinite(result["bpd"])

    [event] = _events(run, "rollback")
    assert event["step"] == 7 and event["to_step"] == 4 and event["lr_scale"] == 0.5
    assert "3 steps in a row" in event["why"]
    steps = [s for s, _, _ in spy.history]
    assert steps == [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]  # steps 5-7 redone from step 4's checkpoint
    # the state it went back to is exactly the one saved at step 4, EMA included
    first, again = (i for i, s in enumerate(steps) if s == 4)
    assert _same(spy.history[first][1], spy.history[again][1])
    # the learning rate is halved from then on (the spy logs the schedule's, the loop applies the scale)
    logged = {r["step"]: r["lr"] for r in read_metrics(run) if "lr" in r}  # step s ran with schedule(s - 1)
    schedule = {s: lr for s, _, lr in spy.history}
    assert logged[4] == pytest.approx(schedule[3]) and logged[10] == pytest.approx(0.5 * schedule[9])
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert (meta["lr_scale"], meta["rollbacks"], meta["bad_in_a_row"]) == (0.5, 1, 0)
    assert all(finite for _, finite in spy.written)


def test_non_finite_state_at_a_checkpoint_is_never_written_but_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch, set())
    run = tmp_path / "run"

    def poison_ema() -> None:  # the loss never sees the EMA, so only the checkpoint check can catch it
        with torch.no_grad():
            next(iter(spy.ema.state_dict().values())).fill_(float("inf"))

    spy.before_step[4] = poison_ema
    train(tiny_config(run, "train.steps=8", "train.checkpoint_every=3"))
    [event] = _events(run, "rollback")
    assert (event["step"], event["to_step"]) == (6, 3) and "non-finite values in ema/" in event["why"]
    assert [s for s, _ in spy.written] == [0, 3, 6, 8]  # step 6 written after the redo, not before
    assert all(finite for _, finite in spy.written)
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert meta["rollbacks"] == 1


def test_absurd_lr_rolls_back_then_stops_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch, set())
    run = tmp_path / "run"
    cfg = tiny_config(run, "train.steps=60", "train.checkpoint_every=5", "optim.lr=1e12", "optim.max_bad_steps=2")
    with pytest.raises(TrainingDiverged, match="rolled back 3 time.*lower optim.lr") as err:
        train(cfg)
    assert isinstance(err.value, MsflowError)
    assert [e["lr_scale"] for e in _events(run, "rollback")] == [0.5, 0.25, 0.125]
    assert spy.written and all(finite for _, finite in spy.written)
    tensors, _ = load_checkpoint(run / CHECKPOINT)  # the last good checkpoint is still there
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_absurd_learning_rate_recovers_when_the_rollback_lowers_it_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _Spy(monkeypatch, set())
    run = tmp_path / "run"
    overrides = ["optim.lr=1e12", "optim.max_bad_steps=2", "optim.rollback_lr_factor=1e-15"]
    result = train(tiny_config(run, "train.steps=12", "train.checkpoint_every=5", *overrides))
    [event] = _events(run, "rollback")
    assert (event["to_step"], event["lr_scale"]) == (0, 1e-15)
    # Back at step 0 with the learning rate 1e12 x 1e-15, the run is the one trained at 1e-3 from the
    # start: the same data order and noise (pure functions of seed and step), the same updates.
    plain = train(tiny_config(tmp_path / "plain", "train.steps=12", "train.checkpoint_every=5", "optim.lr=1e-3"))
    assert result["steps"] == plain["steps"] == 12
    assert result["bpd"] == pytest.approx(plain["bpd"], rel=1e-9)
