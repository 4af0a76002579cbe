"""Runs bounded by time (issue 26): a progress bar over the budget, test curves against budget
seconds, evaluation outside the budget, the report's cost in the results, and flow matching
followed by a likelihood fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import TINY

from msflow.cli import main
from msflow.train.progress import TrainingBar
from runs import read_metrics

FAST_SOLVER = "{train: {method: rk4, step_size: 0.5}, eval: {method: rk4, step_size: 0.25}}"
OPTIONS = f"model.options={{image_shape: [1, 8, 8], resolutions: 2, steps: 1, hidden: 8, solver: {FAST_SOLVER}}}"
MRCNF = ["mnist5k-mrcnf", *TINY, OPTIONS, "train.log_every=1", "train.num_samples=0"]


def test_a_time_bounded_run_shows_its_budget_not_a_step_count_it_will_never_reach(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    args = ["train", *MRCNF, "train.steps=1000000", "train.max_seconds=2", "train.progress=true"]
    assert main([*args, "train.objective=flow_matching", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "s budget" in err and "step=" in err
    assert "/1000000" not in err
    result = json.loads((out / "results.json").read_text())
    assert 2.0 <= result["train_seconds"] < 4.0 and result["steps"] > 1
    assert result["report_wall_seconds"] > 0


def test_the_bar_counts_steps_when_the_run_has_no_time_limit(capsys) -> None:  # noqa: ANN001
    bar = TrainingBar(total_steps=10, step=0, max_seconds=0.0, spent=0.0, desc="t", enabled=True)
    bar.advance(step=4, spent=123.0)
    assert bar.fraction_done == 0.4
    bar.close()
    assert "4/10" in capsys.readouterr().err


def test_evaluations_every_budget_seconds_are_outside_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", *MRCNF, "train.steps=1000000", "train.max_seconds=3", "train.budget_clock=cpu"]
    args += ["train.objective=flow_matching", "train.eval_seconds=1", "train.eval_images=7"]
    assert main([*args, "--out", str(out)]) == 0
    evals = [r for r in read_metrics(out) if "test_bpd" in r]
    assert len(evals) >= 3 and evals[-1].get("final")
    seconds = [r["train_seconds"] for r in evals]
    assert seconds == sorted(seconds) and seconds[0] >= 1.0 and seconds[-1] < 4.0
    # Each mid-run evaluation lands on the first step past its mark, one mark apart.
    assert all(b - a < 1.9 for a, b in zip(seconds[:-1], seconds[1:], strict=False))
    result = json.loads((out / "results.json").read_text())
    assert result["n"] == 7
    # The evaluations took CPU time too, and the budget did not count it.
    steps = [r["step"] for r in read_metrics(out) if "fm_level0" in r]
    assert steps[-1] == result["steps"]


def test_flow_matching_then_likelihood_switches_for_the_last_fraction(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", *MRCNF, "train.steps=10", "train.max_seconds=0"]
    args += ["train.objective=flow_matching_then_likelihood", "train.finetune_fraction=0.3"]
    assert main([*args, "--out", str(out)]) == 0
    records = [r for r in read_metrics(out) if "lr" in r]
    kinds = ["fm" if "loss_fm" in r else "ml" for r in records]
    assert kinds == ["fm"] * 7 + ["ml"] * 3
    assert all(r["nfe"] > 0 for r in records[7:]) and all(r["nfe"] == 0 for r in records[:7])


@pytest.mark.parametrize("bad", ["train.finetune_fraction=1", "train.eval_seconds=-1", "train.objective=fm"])
def test_bad_budget_options_name_the_fix(bad: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["train", *MRCNF, "train.steps=1", bad, "--out", str(tmp_path / "r")]) == 2
    assert bad.split("=")[0] in capsys.readouterr().err


def test_evaluation_counts_diverged_images_and_the_report_says_the_mean_is_unusable() -> None:
    import torch

    from msflow import create_model
    from msflow.cli._common import bpd_line
    from msflow.data import ImageDataset
    from msflow.train.evaluate import evaluate

    model = create_model("glow-mnist", image_shape=(1, 8, 8), steps=1, hidden=4)
    data = ImageDataset(torch.zeros(5, 1, 8, 8, dtype=torch.uint8))
    values = torch.tensor([1.0, float("inf"), 2e3, 3.0, float("nan")])
    result = evaluate(model, data, batch_size=5, score=lambda m, x, g, cond=None: values)
    assert result["diverged"] == 3 and result["n"] == 5
    assert "3 of 5 images diverged" in bpd_line("test", result, "zeros", 0)
    fine = evaluate(model, data, batch_size=5, score=lambda m, x, g, cond=None: values.nan_to_num(1.0).clamp(max=5.0))
    assert fine["diverged"] == 0 and "diverged" not in bpd_line("test", fine, "zeros", 0)
