"""The divergence guard recovers or stops with advice (issue 25, item 4): checkpoints are written
only after steps that trained, every roll-back lands on such a state, a run that ends inside a
streak of non-finite steps exits 2 with advice, and no written JSON holds NaN or Infinity."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import TINY

from msflow.cli import main
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint

HOT = [*TINY, "optim.lr=10", "train.log_every=1"]


def _json_files_are_strict(run: Path) -> None:
    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"{c} in {run}")))

    for line in (run / "metrics.jsonl").read_text().splitlines():
        strict(line)
    if (run / "results.json").exists():
        strict((run / "results.json").read_text())
    _, meta = load_checkpoint(run / CHECKPOINT)
    strict(json.dumps(meta))


def test_a_run_ending_inside_a_bad_streak_exits_2_with_advice(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "mnist5k-glow", *HOT, "optim.warmup_steps=0", "train.steps=50", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "training ended inside a streak of" in err and "lower optim.lr (now 10)" in err and err.count("\n") == 1
    assert not (run / "results.json").exists()
    _json_files_are_strict(run)


def test_every_roll_back_lands_on_a_state_that_trained(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["train", "mnist5k-glow", *HOT, "train.steps=300", "train.checkpoint_every=10", "--out", str(run)]
    assert main(args) == 2
    assert "already rolled back 3 time(s)" in capsys.readouterr().err
    trained: dict[int, bool] = {0: True}  # per step, as the log goes: did its latest run train?
    rollbacks = 0
    for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        if record.get("event") == "rollback":
            rollbacks += 1
            assert trained[record["to_step"]], f"rolled back to step {record['to_step']}, which did not train"
        elif "loss_bpd" in record:
            trained[record["step"]] = record["loss_bpd"] is not None and record["grad_norm"] is not None
    assert rollbacks == 3
    _json_files_are_strict(run)
