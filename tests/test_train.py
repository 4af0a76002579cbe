"""The training loop: schedules, data order, metrics log, EMA, run folders.

Runs use the bundled 8x8 digits and a one-step, 8-channel Glow so that a whole run takes about
a second. Crash safety is in test_faults.py, the non-finite guard in test_numerical_faults.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import msflow.train.checkpoint as checkpoint_module
from msflow.data.batches import epoch_order
from msflow.errors import CheckpointError, MsflowError, ShapeError
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.config import Config, config_from_dict
from msflow.train.ema import EMA
from msflow.train.loop import train
from msflow.train.metrics_log import MetricsLog
from msflow.train.recipe import learning_rate
from runs import read_metrics, tiny_config, tmp_files

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


def _checkpointed_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The steps of every checkpoint written from now on (in order), read where test_faults.py hooks in."""
    steps: list[int] = []
    real_save = checkpoint_module.save_file

    def save_file(tensors, filename, metadata=None):  # noqa: ANN001, ANN202
        steps.append(json.loads(metadata["meta"])["step"])
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    return steps


@pytest.mark.parametrize(("every", "expected"), [(0, [0, 4]), (3, [0, 3, 4])])
def test_checkpoint_every_zero_means_no_periodic_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int, expected: list[int]
) -> None:
    # Step 0 (what a roll-back returns to) and the last step (with the results) are written whatever the period.
    written = _checkpointed_steps(monkeypatch)
    train(tiny_config(tmp_path / "run", "train.steps=4", f"train.checkpoint_every={every}"))
    assert written == expected


@pytest.mark.parametrize(("every", "expected"), [(0, [4]), (3, [3, 4])])
def test_log_every_zero_logs_only_the_last_step(tmp_path: Path, every: int, expected: list[int]) -> None:
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=4", f"train.log_every={every}"))
    assert [r["step"] for r in read_metrics(run) if "loss_bpd" in r] == expected


def test_num_samples_zero_draws_no_sample_grids(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny_config(run, "train.steps=2", "train.num_samples=0"))
    assert result["samples"] == [] and not (run / "samples").exists()
    assert json.loads((run / "results.json").read_text())["steps"] == 2


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_max_seconds_stops_training_and_counts_time_over_resumes(tmp_path: Path, clock: str) -> None:
    run = tmp_path / "run"
    overrides = ["train.steps=100000", "train.max_seconds=1.5", "train.checkpoint_every=2"]
    cfg = tiny_config(run, *overrides, f"train.budget_clock={clock}")
    result = train(cfg)
    assert 0 < result["steps"] < 100000
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    assert meta["step"] == result["steps"] and meta["train_seconds"] >= 1.5
    assert math.isfinite(result["bpd"])
    # the budget is spent: running the command again trains no further
    assert train(cfg)["steps"] == result["steps"]


@pytest.mark.parametrize(
    ("flags", "device", "expected"),
    [
        (frozenset({"avx512f", "avx512_bf16"}), "cpu", "bf16-mixed"),
        (frozenset({"amx_bf16", "amx_tile"}), "cpu", "bf16-mixed"),
        (frozenset({"avx2", "avx512f"}), "cpu", "float32"),
        (frozenset(), "cpu", "float32"),
        (frozenset({"avx512_bf16"}), "cuda", "float32"),  # launch-bound on a GPU: see msflow/train/precision.py
    ],
)
def test_auto_precision_is_bf16_mixed_only_on_bf16_hardware(
    monkeypatch: pytest.MonkeyPatch, flags: frozenset, device: str, expected: str
) -> None:
    from msflow.train import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    assert precision.resolve_precision("auto", torch.device(device)) == expected
    for fixed in ("float32", "bf16-mixed"):  # an explicit choice is kept on any hardware
        assert precision.resolve_precision(fixed, torch.device(device)) == fixed


def test_non_finite_samples_skip_the_grids_but_the_run_finishes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Samples that are NaN (here: the sampled weights broken during sampling) draw no grid; the run
    logs it, keeps its weights and still writes its results."""
    import msflow.train.loop as loop

    real = loop.sample_grids

    def broken_grids(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))  # the EMA weights swapped in for sampling: restored after
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "sample_grids", broken_grids)
    cfg = tiny_config(tmp_path / "run", "train.steps=2", "train.num_samples=4")
    result = train(cfg)
    assert result["samples"] == [] and json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 2
    failed = [r for r in read_metrics(tmp_path / "run") if r.get("event") == "samples_failed"]
    assert [r["tag"] for r in failed] == ["final"] and "not finite" in failed[0]["error"]
    tensors, _ = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model/"))
