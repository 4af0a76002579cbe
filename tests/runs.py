"""Shared helpers of the training tests: tiny configs, running `msflow`, comparing final states.

Runs use the bundled 8x8 digits and a one-step, 8-channel Glow so that a whole run takes about
a second; the crash tests run the real ``msflow`` command in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tiny import TINY as TINY_BASE

from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from msflow.train.config import Config, apply_overrides, load_config, replace

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
        # bit for bit: a resumed CPU run redoes exactly the same arithmetic
        assert torch.equal(value, ref), f"{name} differs by {(value.double() - ref.double()).abs().max().item()}"
    assert meta["step"] == ref_meta["step"] == 24
    assert meta["optimizer"] == ref_meta["optimizer"]
    assert meta["config"]["model"] == ref_meta["config"]["model"]
    for key in ("bpd", "bpd_stderr"):
        assert meta["results"][key] == ref_meta["results"][key]
    result = json.loads((run / "results.json").read_text())
    assert result["bpd"] == json.loads((reference / "results.json").read_text())["bpd"]
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
        assert loss == ref_loss, f"loss at step {step}"
    evals = [r["step"] for r in records if "test_bpd" in r]
    assert evals == [8, 16, 24]
    assert all(r["step"] == 24 for r in records if r.get("final"))
