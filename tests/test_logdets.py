"""Per-block log-det tracking: exact against encode(), the JSONL log, the growth warning, training runs."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny import TINY

import msflow
from msflow.core import FlowSequential
from msflow.errors import ConfigError, MsflowError
from msflow.train.config import Config, apply_overrides, load_config, replace
from msflow.train.logdets import (
    LogdetTracker,
    UnstableLogdetWarning,
    block_logdets,
    flow_blocks,
    growth_warnings,
    plot_logdets,
    read_logdets,
)
from msflow.train.loop import train
from msflow.transforms import ActNorm, Squeeze

STEP = ["ActNorm", "InvConv1x1", "AffineCoupling"]
# the blocks of a two-level, two-step Glow, in the order the density direction applies them
GLOW_NAMES = [
    "preprocess.Logit",
    *(
        f"level{i}.block{j}.{kind}"
        for i in range(2)
        for j, kind in enumerate(["Squeeze", *STEP, *STEP, "GaussianSplitPrior"])
    ),
]


def tiny_config(out: Path, *overrides: str) -> Config:
    cfg = apply_overrides(load_config("mnist5k-glow"), [*TINY, *overrides])
    return replace(cfg, train=replace(cfg.train, out=str(out)))


def float64_glow(randomize: Callable[..., torch.nn.Module]) -> tuple[torch.nn.Module, torch.Tensor]:
    """A two-level Glow in float64 with ActNorm initialised and every block non-trivial."""
    model = msflow.create_model("glow-mnist", image_shape=[1, 8, 8], steps=2, hidden=8, preprocess="logit").double()
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    model.bits_per_dim(x)  # the data-dependent ActNorm initialisation
    randomize(model, std=0.05)  # zero-initialised couplings and priors would have log-det 0
    return model, x


# ----------------------------------------------------------------------------- what is measured


def test_block_values_add_up_to_the_log_det_of_encode(randomize: Callable[..., torch.nn.Module]) -> None:
    model, x = float64_glow(randomize)
    values = block_logdets(model, x, generator=torch.Generator().manual_seed(7))
    assert list(values) == GLOW_NAMES
    v, _ = model.dequantizer(x, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _, logdet = model.encode(v)
    assert sum(values.values()) * 64 == pytest.approx(logdet.mean().item(), rel=1e-12, abs=1e-9)
    # every block but the volume-preserving Squeeze contributes
    for name, value in values.items():
        assert (value == 0.0) if name.endswith("Squeeze") else (abs(value) > 1e-4), name
    # each block alone: per dimension of the whole 64-dim image, averaged over the batch
    pre, ld = model.preprocess(v)
    assert values["preprocess.Logit"] * 64 == pytest.approx(ld.mean().item(), rel=1e-12)
    h, _ = model.levels[0].blocks[0](pre)
    h, _ = model.levels[0].blocks[1](h)
    _, ld = model.levels[0].blocks[2](h)
    assert values["level0.block2.InvConv1x1"] * 64 == pytest.approx(ld.mean().item(), rel=1e-12)


def test_measuring_leaves_the_model_and_the_rng_alone(randomize: Callable[..., torch.nn.Module]) -> None:
    model, x = float64_glow(randomize)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    first = block_logdets(model, x, generator=torch.Generator().manual_seed(3))
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not block._forward_hooks for block in flow_blocks(model).values())
    assert block_logdets(model, x, generator=torch.Generator().manual_seed(3)) == first
    assert block_logdets(model, x, generator=torch.Generator().manual_seed(4)) != first


def test_pending_actnorm_initialisation_is_refused() -> None:
    model = msflow.create_model("glow-mnist", image_shape=[1, 8, 8], levels=1, steps=1, hidden=4)
    with pytest.raises(ValueError, match="after the first training step"):
        block_logdets(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert not bool(model.levels[0].blocks[1].initialized)


def test_nested_flow_sequentials_are_entered() -> None:
    inner = FlowSequential(ActNorm(4), Squeeze())
    flow = FlowSequential(Squeeze(), inner)
    assert list(flow_blocks(flow)) == [
        "flow.block0.Squeeze",
        "flow.block1.block0.ActNorm",
        "flow.block1.block1.Squeeze",
    ]


# ----------------------------------------------------------------------------- the log and the warning


def test_tracker_writes_one_line_per_measurement_with_every_block(
    tmp_path: Path, randomize: Callable[..., torch.nn.Module]
) -> None:
    model, x = float64_glow(randomize)
    tracker = LogdetTracker(model, tmp_path, seed=5)
    for step in (10, 20, 30):
        tracker.measure(x, step)
    records = read_logdets(tmp_path / "logdets.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30]
    assert all(sorted(r) == ["logdet_per_dim", "step"] for r in records)
    assert all(list(r["logdet_per_dim"]) == GLOW_NAMES for r in records)
    # the noise of step s is seeded by (seed, s): a fresh tracker measures the same numbers
    again = LogdetTracker(model, tmp_path / "other", seed=5)
    (tmp_path / "other").mkdir()
    assert again.measure(x, 20) == records[1]["logdet_per_dim"]
    assert plot_logdets(tmp_path) == tmp_path / "logdets.png"
    assert (tmp_path / "logdets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _series(values: list[float], name: str = "level0.block2.InvConv1x1") -> list[dict]:
    return [
        {"step": 100 * (i + 1), "logdet_per_dim": {name: v, "level0.block1.ActNorm": 0.0}} for i, v in enumerate(values)
    ]


def test_growth_rule() -> None:
    growing = [0.0, 0.05, 0.1, 0.2, 0.3, 0.45]
    (message,) = growth_warnings(_series(growing), window=5, threshold=0.1).values()
    assert message.startswith(
        "block level0.block2.InvConv1x1's log-det grew from 0 to 0.45 nats/dim over steps 100-600"
    )
    assert "Liao & He sec. 2.2" in message and "lower optim.lr" in message
    assert growth_warnings(_series(growing[1:]), window=5) == {}  # fewer than window + 1 values
    assert growth_warnings(_series(growing), window=5, threshold=0.5) == {}  # not enough growth
    flat = [0.2] * 8
    noisy = [0.2, 0.25, 0.21, 0.3, 0.28, 0.4, 0.35, 0.5]  # rises overall, but not at every measurement
    assert growth_warnings(_series(flat)) == {} and growth_warnings(_series(noisy)) == {}
    assert growth_warnings(_series([0.0, 0.1, 0.2, None, 0.4, 0.5])) == {}  # non-finite is not growth


def test_tracker_warns_once_per_block_and_not_for_noise(tmp_path: Path) -> None:
    tracker = LogdetTracker(torch.nn.Identity(), tmp_path, window=3, threshold=0.1)
    noisy = [0.1, 0.12, 0.09, 0.11, 0.1, 0.12]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, value in enumerate(noisy, start=1):
            tracker.record(step, {"noisy": value, "growing": step / 10})
    assert [str(w.message).split(";")[0] for w in caught] == [
        "block growing's log-det grew from 0.1 to 0.4 nats/dim over steps 1-4"
    ]
    assert caught[0].category is UnstableLogdetWarning
    # after a resume the block that already warned stays quiet; the lines past the step are dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = LogdetTracker(torch.nn.Identity(), tmp_path, resume_step=6, window=3, threshold=0.1)
        resumed.record(7, {"noisy": 0.1, "growing": 0.7})
    assert [r["step"] for r in read_logdets(tmp_path / "logdets.jsonl")] == [1, 2, 3, 4, 5, 6, 7]


def test_plot_needs_measurements(tmp_path: Path) -> None:
    with pytest.raises(MsflowError, match="train.logdet_every"):
        plot_logdets(tmp_path)
    (tmp_path / "logdets.jsonl").write_text(json.dumps(_series([0.0])[0]) + "\n" + '{"step": 2, "logdet')
    assert plot_logdets(tmp_path / "logdets.jsonl", tmp_path / "x.png").is_file()
    assert LogdetTracker(torch.nn.Identity(), tmp_path / "none").plot() is None


# ----------------------------------------------------------------------------- training runs


def test_config_validates_logdet_every() -> None:
    assert tiny_config(Path("x")).train.logdet_every == 0
    with pytest.raises(ConfigError, match="train.logdet_every must be an integer >= 0"):
        tiny_config(Path("x"), "train.logdet_every=-1")


def _losses(run: Path) -> list[float]:
    return [r["loss_bpd"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss_bpd" in r]


def test_training_writes_logdets_and_a_plot_without_changing_the_run(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path / "run", "train.steps=6", "train.logdet_every=2", "train.log_every=1"))
    records = read_logdets(tmp_path / "run" / "logdets.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6]
    assert len(records[0]["logdet_per_dim"]) == 11  # Affine, 2 x (Squeeze ActNorm InvConv1x1 AffineCoupling prior)
    assert all(math.isfinite(v) for r in records for v in r["logdet_per_dim"].values())
    assert (tmp_path / "run" / "logdets.png").read_bytes()[:4] == b"\x89PNG"
    # the measurements draw no training randomness: the same losses and result as without them
    plain = train(tiny_config(tmp_path / "plain", "train.steps=6", "train.log_every=1"))
    assert _losses(tmp_path / "run") == _losses(tmp_path / "plain")
    assert result["bpd"] == plain["bpd"]


def test_resume_does_not_duplicate_lines(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # a constant learning rate, so that a run to step 4 is the first part of a run to step 6
    overrides = ["train.logdet_every=1", "train.checkpoint_every=2", "train.num_samples=0", "optim.schedule=constant"]
    train(tiny_config(run, "train.steps=4", *overrides))
    with open(run / "logdets.jsonl", "a") as f:  # what a run killed after its step-4 checkpoint logged
        f.write(json.dumps({"step": 5, "logdet_per_dim": {"stale": 1.0}}) + "\n" + '{"step": 6, "lo')
    train(tiny_config(run, "train.steps=6", *overrides))
    records = read_logdets(run / "logdets.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all("stale" not in r["logdet_per_dim"] for r in records)
    reference = tmp_path / "reference"
    train(tiny_config(reference, "train.steps=6", *overrides))
    assert read_logdets(reference / "logdets.jsonl") == records
