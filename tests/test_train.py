"""The training loop: exact resume after SIGKILL, the non-finite step guard, schedules, logs.

Runs use the bundled 8x8 digits and a one-step, 8-channel Glow so that a whole run takes about
a second; the crash tests run the real ``msflow`` command in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import TINY as TINY_BASE

import msflow.train.loop as loop
from msflow.errors import CheckpointError, MsflowError, ShapeError
from msflow.train.checkpoint import load_checkpoint
from msflow.train.config import Config, apply_overrides, config_from_dict, load_config, replace
from msflow.train.ema import EMA
from msflow.train.loop import TrainingDiverged, epoch_order, learning_rate, train
from msflow.train.metrics_log import MetricsLog
from msflow.train.run import CHECKPOINT

TINY = [*TINY_BASE, "train.log_every=1"]

# 1438 digits / 256 = 5 steps per epoch: 24 steps cross four epoch boundaries; eval, sample
# grids and checkpoints all happen mid-run.
RESUME_ARGS = [
    "mnist5k-glow",
    *TINY,
    "train.batch_size=256",
    "train.steps=24",
    "train.checkpoint_every=4",
    "train.eval_every=8",
    "train.sample_every=8",
    "optim.warmup_steps=5",
    "optim.schedule=cosine",
]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 240


def tiny_config(out: Path, *overrides: str) -> Config:
    cfg = apply_overrides(load_config("mnist5k-glow"), [*TINY, *overrides])
    return replace(cfg, train=replace(cfg.train, out=str(out)))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tmp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp"))


def msflow_command() -> list[str]:
    script = Path(sys.executable).with_name("msflow")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "msflow.cli"]


def run_msflow(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        msflow_command() + args, cwd=cwd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=TIMEOUT
    )


# ----------------------------------------------------------------------------- crash and resume

# Runs `msflow train` (argv[4:]) and freezes it at a chosen point, writing a marker file, so the
# test can SIGKILL it at a known place: "step" freezes after step AT has finished (between
# checkpoints); "write" freezes halfway through writing the checkpoint of step AT.
HOLD_SCRIPT = """
import json, sys, time
from pathlib import Path

import msflow.train.checkpoint as checkpoint
import msflow.train.loop as loop

mode, at, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])


def hold():
    marker.write_text(str(at))
    time.sleep(600)


if mode == "step":
    real_learning_rate = loop.learning_rate

    def learning_rate(cfg, step):
        if step == at:  # called before step at + 1, so steps 1..at are done
            hold()
        return real_learning_rate(cfg, step)

    loop.learning_rate = learning_rate
else:
    real_save_file = checkpoint.save_file

    def save_file(tensors, filename, metadata=None):
        if json.loads(metadata["meta"])["step"] == at:
            real_save_file(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            hold()
        return real_save_file(tensors, filename, metadata=metadata)

    checkpoint.save_file = save_file

from msflow.cli import main

sys.exit(main(sys.argv[4:]))
"""


def start_and_sigkill(tmp_path: Path, mode: str, at: int, run_dir: Path) -> list[int]:
    """Start `msflow train RESUME_ARGS --out run_dir`, SIGKILL it once it reaches ``at``.

    While waiting, every checkpoint that appears must load (never a partial file). Returns the
    checkpoint steps seen.
    """
    script = tmp_path / "hold.py"
    script.write_text(HOLD_SCRIPT)
    marker = tmp_path / f"held-{mode}"
    log = tmp_path / f"killed-{mode}.log"
    argv = [sys.executable, str(script), mode, str(at), str(marker), "train", *RESUME_ARGS, "--out", str(run_dir)]
    seen: list[int] = []
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=SUBPROCESS_ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not marker.exists():
                assert proc.poll() is None, f"training exited ({proc.returncode}) before step {at}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"training did not reach step {at}:\n{log.read_text()}"
                if (run_dir / CHECKPOINT).exists():
                    _, meta = load_checkpoint(run_dir / CHECKPOINT)
                    if not seen or seen[-1] != meta["step"]:
                        seen.append(meta["step"])
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert not (run_dir / "results.json").exists(), "the run finished before it was killed"
    return seen


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run as the crash tests, never interrupted."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_msflow(["train", *RESUME_ARGS, "--out", str(tmp / "run")], cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp / "run"


def assert_same_final_state(run: Path, reference: Path) -> None:
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    ref_tensors, ref_meta = load_checkpoint(reference / CHECKPOINT)
    assert set(tensors) == set(ref_tensors)
    assert any(k.startswith("model/") for k in tensors)
    assert any(k.startswith("ema/") for k in tensors)
    assert any(k.startswith("optim/") and k.endswith("exp_avg_sq") for k in tensors)
    for name, ref in ref_tensors.items():
        value = tensors[name]
        assert value.dtype == ref.dtype and value.shape == ref.shape, name
        if value.is_floating_point():
            diff = (value.double() - ref.double()).abs().max().item() if value.numel() else 0.0
            assert diff <= 1e-6, f"{name} differs by {diff}"
        else:
            assert torch.equal(value, ref), name
    assert meta["step"] == ref_meta["step"] == 24
    assert meta["optimizer"] == ref_meta["optimizer"]
    assert meta["config"]["model"] == ref_meta["config"]["model"]
    for key in ("bpd", "bpd_stderr"):
        assert abs(meta["results"][key] - ref_meta["results"][key]) <= 1e-6
    result = json.loads((run / "results.json").read_text())
    assert abs(result["bpd"] - json.loads((reference / "results.json").read_text())["bpd"]) <= 1e-6
    assert (run / "samples" / "final_t0.70.png").read_bytes() == (
        reference / "samples" / "final_t0.70.png"
    ).read_bytes()

    # The metrics log has each step exactly once, with the uninterrupted run's losses.
    records, ref_records = read_metrics(run), read_metrics(reference)
    losses = [(r["step"], r["loss_bpd"]) for r in records if "loss_bpd" in r]
    ref_losses = [(r["step"], r["loss_bpd"]) for r in ref_records if "loss_bpd" in r]
    assert [s for s, _ in losses] == list(range(1, 25))
    assert [s for s, _ in ref_losses] == list(range(1, 25))
    for (step, loss), (_, ref_loss) in zip(losses, ref_losses, strict=True):
        assert abs(loss - ref_loss) <= 1e-6, f"loss at step {step}"
    evals = [r["step"] for r in records if "test_bpd" in r]
    assert evals == [8, 16, 24]
    assert all(r["step"] == 24 for r in records if r.get("final"))


def test_resume_after_sigkill_between_checkpoints_is_exact(tmp_path: Path, reference_run: Path) -> None:
    run_dir = tmp_path / "run"
    seen = start_and_sigkill(tmp_path, "step", at=14, run_dir=run_dir)
    assert set(seen) <= {4, 8, 12}  # every checkpoint seen while it ran was complete
    _, meta = load_checkpoint(run_dir / CHECKPOINT)
    assert meta["step"] == 12
    # steps 13 and 14 ran after the checkpoint and were logged; the resumed run redoes them
    assert max(r["step"] for r in read_metrics(run_dir)) == 14
    assert tmp_files(run_dir) == []

    proc = run_msflow(["train", *RESUME_ARGS, "--out", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test bits/dim:" in proc.stdout
    assert_same_final_state(run_dir, reference_run)
    assert tmp_files(run_dir) == []
    load_checkpoint(run_dir / CHECKPOINT)


def test_resume_after_sigkill_during_checkpoint_write_is_exact(tmp_path: Path, reference_run: Path) -> None:
    run_dir = tmp_path / "run"
    start_and_sigkill(tmp_path, "write", at=16, run_dir=run_dir)
    # killed halfway through writing step 16: the half-written file is a temporary one, and the
    # checkpoint is still the complete one of step 12
    assert len(tmp_files(run_dir)) == 1
    _, meta = load_checkpoint(run_dir / CHECKPOINT)
    assert meta["step"] == 12

    proc = run_msflow(["train", *RESUME_ARGS, "--out", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_final_state(run_dir, reference_run)
    # the partial temporary file of the killed run must not stay behind (for real models it is
    # as large as a checkpoint, and one more accumulates after every crash)
    assert tmp_files(run_dir) == [], "stale partial checkpoint left in the run folder"


# ----------------------------------------------------------------------------- schedules and order


def _schedule_config(schedule: str, warmup: int = 10, steps: int = 110, lr: float = 1e-3) -> Config:
    return config_from_dict(
        {"optim": {"lr": lr, "warmup_steps": warmup, "schedule": schedule}, "train": {"steps": steps}}
    )


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("constant", 0, 1e-4),
        ("constant", 4, 5e-4),
        ("constant", 9, 1e-3),
        ("constant", 10, 1e-3),
        ("constant", 109, 1e-3),
        ("cosine", 0, 1e-4),
        ("cosine", 9, 1e-3),
        ("cosine", 10, 1e-3),
        ("cosine", 35, 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25))),
        ("cosine", 60, 5e-4),
        ("cosine", 110, 0.0),
        ("cosine", 500, 0.0),
    ],
)
def test_learning_rate_warmup_and_cosine(schedule: str, step: int, expected: float) -> None:
    assert learning_rate(_schedule_config(schedule), step) == pytest.approx(expected, abs=1e-15)


def test_learning_rate_without_warmup_and_monotone_cosine() -> None:
    assert learning_rate(_schedule_config("constant", warmup=0), 0) == 1e-3
    assert learning_rate(_schedule_config("cosine", warmup=0), 0) == pytest.approx(1e-3)
    cfg = _schedule_config("cosine")
    values = [learning_rate(cfg, s) for s in range(cfg.train.steps)]
    assert values[:10] == sorted(values[:10])  # warm-up rises
    assert values[10:] == sorted(values[10:], reverse=True)  # cosine falls
    assert all(v > 0 for v in values)
    # warm-up longer than the run: still linear, never above lr
    short = _schedule_config("cosine", warmup=200, steps=50)
    assert learning_rate(short, 49) == pytest.approx(1e-3 * 50 / 200)


def test_epoch_order_is_a_deterministic_permutation() -> None:
    first = epoch_order(1000, seed=3, epoch=2)
    assert torch.equal(first, epoch_order(1000, seed=3, epoch=2))
    assert torch.equal(first.sort().values, torch.arange(1000))
    assert not torch.equal(first, epoch_order(1000, seed=3, epoch=3))
    assert not torch.equal(first, epoch_order(1000, seed=4, epoch=2))
    torch.manual_seed(123)  # independent of the global RNG
    assert torch.equal(first, epoch_order(1000, seed=3, epoch=2))
    # the same across processes and torch versions is not promised, but the same in-process is
    orders = {tuple(epoch_order(50, 0, e).tolist()) for e in range(20)}
    assert len(orders) == 20


# ----------------------------------------------------------------------------- metrics log and EMA


def test_metrics_log_truncates_lines_past_the_resume_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, 11):
        log.write({"step": step, "loss_bpd": float(step)})
    log.write({"step": 5, "test_bpd": 1.0})
    log.write({"event": "no step"})
    with open(path, "a") as f:
        f.write('{"step": 11, "loss_bp')  # cut short by a crash

    MetricsLog(path, resume_step=6)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("step") for r in records] == [1, 2, 3, 4, 5, 6, 5, None]
    assert path.read_text().endswith("\n")

    log = MetricsLog(path, resume_step=6)
    log.write({"step": 7, "loss_bpd": 7.0})
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": 7, "loss_bpd": 7.0}
    MetricsLog(path, resume_step=0)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"event": "no step"}]


def test_metrics_log_starts_fresh_file(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.jsonl", resume_step=3)
    assert not (tmp_path / "m.jsonl").exists()
    log.write({"step": 1})
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1}\n'


def test_ema_update_and_applied() -> None:
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 0.1))
    ema.update(net, step=0)  # warm-up: decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 0.1 * 0.1 + 0.9))
    with ema.applied(net):
        assert torch.allclose(net.weight, torch.full((1, 2), 0.91))
    assert torch.equal(net.weight, torch.ones(1, 2))


# ----------------------------------------------------------------------------- non-finite guard


class _Spy:
    """Wraps ``build_model``/``EMA``/``learning_rate`` of the loop to watch and sabotage training."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, bad_steps: set[int] | str, kind: str = "loss") -> None:
        self.bad_steps, self.kind = bad_steps, kind
        self.model: torch.nn.Module | None = None
        self.ema: EMA | None = None
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.shadow: dict[int, dict[str, torch.Tensor]] = {}
        self.calls = 0
        real_build, real_lr = loop.build_model, loop.learning_rate
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
            return real_lr(cfg, step)

        monkeypatch.setattr(loop, "build_model", build_model)
        monkeypatch.setattr(loop, "EMA", SpyEMA)
        monkeypatch.setattr(loop, "learning_rate", learning_rate)


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
    cfg = tiny_config(tmp_path / "run", "train.steps=20", "train.checkpoint_every=2", "optim.max_bad_steps=4")
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


# ----------------------------------------------------------------------------- runs and folders


def test_train_writes_a_complete_run_folder(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", "train.steps=3", "train.checkpoint_every=2", "train.sample_every=2")
    result = train(cfg)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "results.json",
        "samples",
    ]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["final_t0.70.png", "step000002_t0.70.png"]
    assert json.loads((run / "results.json").read_text()) == result
    assert result["steps"] == 3 and result["n"] == 359 and result["run_dir"] == str(run)
    _, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["step"] == 3 and meta["results"] == result
    assert meta["versions"]["torch"] == torch.__version__
    assert tmp_files(run) == []
    # running the finished command again trains no further and reports the same numbers
    again = train(cfg)
    assert again["bpd"] == result["bpd"] and again["steps"] == 3


def test_batch_larger_than_dataset_fails_before_writing(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", "train.batch_size=5000", "train.steps=2")
    with pytest.raises(ShapeError, match="batch_size=5000 exceeds the 1438 training images"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_with_another_model_leaves_the_run_untouched(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=2", "train.checkpoint_every=1"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="different model config"):
        train(tiny_config(run, "train.steps=4", "model.options.hidden=16"))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_with_another_optimizer_is_a_clear_error(tmp_path: Path) -> None:
    """Switching adam -> adamax in a run folder must not crash with a KeyError from torch."""
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=2", "train.checkpoint_every=1"))
    before = (run / CHECKPOINT).read_bytes()
    with pytest.raises(MsflowError, match="optim"):
        train(tiny_config(run, "train.steps=4", "optim.optimizer=adamax"))
    assert (run / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize("override", ["train.checkpoint_every=0", "train.log_every=0", "train.num_samples=0"])
def test_zero_cadence_values_are_refused_or_work(tmp_path: Path, override: str) -> None:
    """``0`` either means "never" (like eval_every=0) or is a ConfigError before anything is
    written; it must not crash with ZeroDivisionError (or after the whole run has trained)."""
    run = tmp_path / "run"
    try:
        cfg = tiny_config(run, "train.steps=2", override)
    except MsflowError:
        return
    try:
        train(cfg)
    except MsflowError:
        assert not run.exists()
    else:
        assert (run / "results.json").exists()
