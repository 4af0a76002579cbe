"""One writer per run folder (issue 25, item 3): a second trainer refuses at once, naming the
first one's PID; the lock dies with its holder; a run is never continued with another seed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny import TINY

from msflow.cli import main
from msflow.train.lock import LOCK_FILE

HOLD = """
import sys, time
from pathlib import Path
from msflow.train.lock import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_trainer_of_a_folder_refuses_until_the_first_is_gone(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert main(["train", "mnist5k-glow", *TINY, "train.steps=2", "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"being trained by another msflow process (PID {holder.pid})" in err and err.count("\n") == 1
        assert time.monotonic() - started < 10 and not (run / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # SIGKILL released the lock: no stale lock blocks the folder.
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=2", "--out", str(run)]) == 0
    assert not (run / LOCK_FILE).exists()  # removed when released: the folder holds what the run wrote


def test_a_run_is_never_continued_with_another_seed(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=2", "--seed", "1", "--out", str(run)]) == 0
    before = (run / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=2", "--seed", "2", "--out", str(run)]) == 2
    assert "different train.seed config (1)" in capsys.readouterr().err
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_rerunning_a_finished_run_logs_nothing_twice(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["train", "mnist5k-glow", *TINY, "train.steps=2", "--out", str(run)]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    log = (run / "metrics.jsonl").read_text()
    assert main(args) == 0 and main(args) == 0
    assert capsys.readouterr().out.splitlines()[0] == first  # reported again, the same
    assert (run / "metrics.jsonl").read_text() == log and log.count('"final": true') == 1


def test_no_command_writes_over_a_runs_own_files(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "mnist5k-glow", *TINY, "train.steps=2", "--out", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    targets = ["checkpoint.safetensors", "results.json", "metrics.jsonl", "config.yaml", "samples/x.png"]
    for target in targets:
        assert main(["sample", str(run), "-n", "4", "-o", str(run / target)]) == 2
        assert f"{run / target} is a file of the training run in" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["sample", str(run), "-n", "4", "-o", str(run / "more.png")]) == 0  # other names are the user's
