"""benchmarks/mrcnf_sweep.py: every trial is a valid configuration, and a tiny sweep runs end to
end (subprocess training, curves of test bits/dim against CPU seconds, level-parallel trials
added up by their dimensions, the plot). Times are never compared."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from bench_scripts import BENCHMARKS, load_script

from msflow.models import create_model
from msflow.train.config import apply_overrides, config_from_dict


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    return load_script("mrcnf_sweep")


def test_every_trial_builds_its_model(sweep: ModuleType) -> None:
    for name, trial in {**sweep.TRIALS, **sweep.SMOKE_TRIALS}.items():
        path = BENCHMARKS.parent / "configs" / f"{trial.config}.yaml"
        cfg = apply_overrides(config_from_dict(yaml.safe_load(path.read_text())), list(trial.overrides))
        model = create_model(cfg.model.name, **cfg.model.options)
        assert not trial.shares or len(trial.shares) == model.num_resolutions, name
        assert not trial.shares or abs(sum(trial.shares) - 1) < 1e-9, name


@pytest.mark.slow
def test_a_tiny_sweep_records_curves_and_plots_them(sweep: ModuleType, tmp_path: Path) -> None:
    report = tmp_path / "sweep.json"
    sweep.main(["--smoke", "--runs", str(tmp_path / "runs"), "--json", str(report), "--points", "2"])
    trials = json.loads(report.read_text())["trials"]
    assert set(trials) == {"smoke-fm", "smoke-levels"}
    for trial in trials.values():
        seconds = [p["train_seconds"] for p in trial["curve"]]
        assert len(seconds) >= 2 and seconds == sorted(seconds)
        assert all(0 < p["test_bpd"] < 12 for p in trial["curve"])
    levels = trials["smoke-levels"]
    assert levels["level_dims"] == [147, 49]
    assert set(levels["jobs"]) == {"smoke-levels-level0", "smoke-levels-level1"}
    # Level-parallel: the CPU seconds of both jobs, and bits/dim weighted by each level's dims.
    assert levels["curve"][-1]["train_seconds"] >= 4.0
    png = sweep.plot(report, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
