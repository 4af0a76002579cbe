"""Crash safety: SIGKILL at chosen and random points, a full disk during a checkpoint write.

Every interrupted run is resumed with the same command and must end in exactly the state of a
run that was never interrupted; no checkpoint on disk may ever be partial or unreadable. The
number of SIGKILLs the suite dealt is printed at its end.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from msflow.train.checkpoint import CHECKPOINT, load_checkpoint
from runs import (
    RESUME_ARGS,
    SUBPROCESS_ENV,
    TIMEOUT,
    assert_same_final_state,
    read_metrics,
    run_msflow,
    tmp_files,
)

# Kills dealt, by where they struck, over every test that ran; printed at the end of the module.
KILLS: Counter[str] = Counter()


def killed(proc: subprocess.Popen | subprocess.CompletedProcess, where: str, log: str = "") -> None:
    """``proc`` died of SIGKILL (the fault was reached); count it."""
    assert proc.returncode == -signal.SIGKILL, f"{where}: exit {proc.returncode}, not a SIGKILL:\n{log[-2000:]}"
    KILLS[where] += 1


@pytest.fixture(scope="module", autouse=True)
def _kill_count(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and KILLS:
        parts = ", ".join(f"{where} {n}" for where, n in sorted(KILLS.items()))
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line(f"\nfault kills: {sum(KILLS.values())} SIGKILLs in all; {parts}")


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
    killed(proc, f"held at a {mode}", log.read_text())
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


# ----------------------------------------------------------------------------- random fault injection

DRIVER = Path(__file__).with_name("faults_driver.py")
STEPS, EVERY = 24, 4  # RESUME_ARGS: 24 steps, a checkpoint every 4, evaluations at 8 and 16


def run_with_fault(fault: str, at: int, run_dir: Path, cwd: Path, latest: int = 0) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(DRIVER), fault, str(at), "train", *RESUME_ARGS, "--out", str(run_dir)]
    env = {**SUBPROCESS_ENV, "FAULT_LATEST_STEP": str(latest)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def saved_step(run_dir: Path) -> int:
    """The step of the run's checkpoint, which must load whenever it exists (-1 if none yet)."""
    path = run_dir / CHECKPOINT
    return load_checkpoint(path)[1]["step"] if path.exists() else -1


def draw_fault(rng: random.Random, kind: str, done: int, cap: int) -> tuple[str, int]:
    """Where ``kind`` strikes, given the checkpointed step ``done``: always reached, and never
    letting the checkpoint pass step ``cap`` (so the run cannot finish before all kills)."""
    later = max(done + 1, min(cap, STEPS - 1))
    if kind == "eval":
        if any(done < s <= cap for s in (8, 16)):  # the process's first evaluation, at step 8 or 16
            return kind, 1
        kind = "step"
    if kind == "step":
        return kind, rng.randint(done + 1, later)  # killed after this step: progress to its checkpoint
    if kind == "checkpoint":
        return kind, (done // EVERY + 1) * EVERY  # the next write: no progress
    if kind == "metrics":
        return kind, rng.randint(done + 1, later)  # a step's line is written before its checkpoint
    if kind == "replace":
        return kind, rng.randint(1, 2)  # the metrics rewrite (or config) and the next checkpoint
    return kind, rng.randint(0, 150)  # timer: milliseconds after the first step starts


def inject_random_faults(run_dir: Path, cwd: Path, kills: int, seed: int) -> list[tuple[str, int, int]]:
    """SIGKILL the run ``kills`` times at random fault points, checking the disk after each.

    Returns ``(fault, at, checkpointed step afterwards)`` for every kill.
    """
    rng = random.Random(seed)
    kinds = ["step", "checkpoint", "metrics", "replace", "eval", "timer"]
    history: list[tuple[str, int, int]] = []
    for i in range(kills):
        done = saved_step(run_dir)
        cap = EVERY * (1 + i * (STEPS // EVERY - 2) // kills)
        kind, at = draw_fault(rng, kinds[i] if i < len(kinds) else rng.choice(kinds), done, cap)
        proc = run_with_fault(kind, at, run_dir, cwd, latest=max(done + 1, cap))
        killed(proc, f"random {kind}", f"{kind} at {at} was not reached:\n{proc.stderr}")
        after = saved_step(run_dir)  # loads, so it is complete
        assert done <= after < STEPS, f"the checkpoint went from step {done} to {after}"
        assert not (run_dir / "results.json").exists()
        assert len(tmp_files(run_dir)) <= 2, tmp_files(run_dir)  # at most the files being written when killed
        history.append((kind, at, after))
    return history


def test_ten_random_kills_resume_to_the_uninterrupted_state(tmp_path: Path, reference_run: Path) -> None:
    run_dir = tmp_path / "run"
    history = inject_random_faults(run_dir, tmp_path, kills=10, seed=2026)
    assert {kind for kind, _, _ in history} == {"step", "checkpoint", "metrics", "replace", "eval", "timer"}
    assert history[-1][2] > 0  # the run made progress between the kills
    proc = run_msflow(["train", *RESUME_ARGS, "--out", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_final_state(run_dir, reference_run)
    assert tmp_files(run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forty_random_kills_resume_to_the_uninterrupted_state(tmp_path: Path, reference_run: Path, seed: int) -> None:
    run_dir = tmp_path / "run"
    inject_random_faults(run_dir, tmp_path, kills=40, seed=seed)
    proc = run_msflow(["train", *RESUME_ARGS, "--out", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_final_state(run_dir, reference_run)


# ----------------------------------------------------------------------------- full disk


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_and_training_goes_on(
    tmp_path: Path, reference_run: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = run_with_fault("enospc", 8, run_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "could not write" in proc.stdout + proc.stderr and "No space left on device" in proc.stdout + proc.stderr
    [event] = [r for r in read_metrics(run_dir) if r.get("event") == "checkpoint_failed"]
    assert event["step"] == 8
    # the failed write cost nothing: the run ends exactly as an uninterrupted one
    assert_same_final_state(run_dir, reference_run)
    assert tmp_files(run_dir) == []


def test_full_disk_then_a_crash_leaves_the_checkpoint_before_the_failed_write(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # the write of step 8 fails (disk full), then the run is killed at step 10: step 4's checkpoint is all there is
    script = tmp_path / "both.py"
    script.write_text(
        "import sys, faults_driver\n"
        "faults_driver.install('enospc', 8)\n"
        "faults_driver.install('step', 10)\n"
        "sys.exit(faults_driver.main(sys.argv[1:]))\n"
    )
    env = {**SUBPROCESS_ENV, "PYTHONPATH": str(DRIVER.parent)}
    argv = [sys.executable, str(script), "train", *RESUME_ARGS, "--out", str(run_dir)]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    killed(proc, "after a full disk", proc.stderr)
    assert saved_step(run_dir) == 4
    assert tmp_files(run_dir) == []  # the half-written file of step 8 was removed when the write failed


def test_full_disk_at_the_final_checkpoint_is_a_clear_error_and_rerunning_finishes(
    tmp_path: Path, reference_run: Path
) -> None:
    run_dir = tmp_path / "run"
    proc = run_with_fault("enospc", STEPS, run_dir, tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("msflow train: error: could not write the final checkpoint")
    assert "No space left on device" in line and "rerun the same command" in line
    assert saved_step(run_dir) == 20 and not (run_dir / "results.json").exists()
    proc = run_msflow(["train", *RESUME_ARGS, "--out", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_final_state(run_dir, reference_run)


# ----------------------------------------------------------------------------- a command's output


def test_a_command_killed_while_replacing_its_output_leaves_the_old_file_whole(
    tmp_path: Path, reference_run: Path
) -> None:
    """``--force`` replaces a file atomically: killed just before the rename, the user's file is
    the old one, byte for byte; rerun, it is the new one."""
    out = tmp_path / "mine.png"
    out.write_bytes(b"the user's own file")
    argv = [sys.executable, str(DRIVER), "replace", "1", "sample", str(reference_run), "-n", "4", "-o", str(out)]
    proc = subprocess.run(
        [*argv, "--force"], cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=TIMEOUT
    )
    killed(proc, "replacing an output", proc.stderr)
    assert out.read_bytes() == b"the user's own file"
    proc = run_msflow(["sample", str(reference_run), "-n", "4", "-o", str(out)], cwd=tmp_path)
    assert proc.returncode == 2 and "exists: give --force" in proc.stderr  # still the user's file
    proc = run_msflow(["sample", str(reference_run), "-n", "4", "-o", str(out), "--force"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
