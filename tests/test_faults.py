"""Crash safety: SIGKILL at chosen and random points, a full disk during a checkpoint write.

Every interrupted run is resumed with the same command and must end in exactly the state of a
run that was never interrupted; no checkpoint on disk may ever be partial or unreadable.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msflow.train.checkpoint import load_checkpoint
from msflow.train.run import CHECKPOINT
from runs import (
    RESUME_ARGS,
    SUBPROCESS_ENV,
    TIMEOUT,
    assert_same_final_state,
    read_metrics,
    run_msflow,
    tmp_files,
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


def test_resume_after_sigkill_between_checkpoints_is_exact(tmp_path: Path, reference_run: Path) -> None:
    run_dir = tmp_path / "run"
    seen = start_and_sigkill(tmp_path, "step", at=14, run_dir=run_dir)
    assert set(seen) <= {0, 4, 8, 12}  # every checkpoint seen while it ran was complete
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
