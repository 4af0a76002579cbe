"""`torchrun --nproc_per_node=2 -m msflow train` (gloo on CPU) matches a one-process run with the
same global batch: the same loss curve, weights and test bits/dim, and one writer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny import TINY

from msflow.train.checkpoint import CHECKPOINT, load_checkpoint

# float32 subnets: with bf16-mixed (the default on bf16 hardware) each rank's half batch runs
# other bf16 kernel blockings than the whole batch, which moves the weights by ~1e-4 in 20 steps.
ARGS = [
    "mnist5k-glow",
    *TINY,
    "train.precision=float32",
    "train.steps=20",
    "train.log_every=1",
    "train.checkpoint_every=10",
    "--seed",
    "3",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, processes: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "msflow", "train", *ARGS, "--out", str(out)]
    else:
        launch = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={_free_port()}"]
        cmd = [sys.executable, *launch, "-m", "msflow", "train", *ARGS, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _losses(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_bpd"]) for r in records if "loss_bpd" in r]


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed support")
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, 1)
    done = _train(two, 2)
    a, b = _losses(one), _losses(two)
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 21))  # rank 0 alone logs, once per step
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) < 1e-4
    assert done.stdout.count("test bits/dim") == 1  # rank 0 reports for the job
    ra, rb = (json.loads((run / "results.json").read_text()) for run in (one, two))
    assert rb["bpd"] == pytest.approx(ra["bpd"], abs=1e-4)
    wa, _ = load_checkpoint(one / CHECKPOINT)
    wb, _ = load_checkpoint(two / CHECKPOINT)
    for key, value in wa.items():
        if key.startswith(("model/", "ema/")):
            assert torch.allclose(value.float(), wb[key].float(), atol=1e-4), key
