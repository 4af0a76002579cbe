"""benchmarks/budget_runs.py reads what finished runs wrote, and its table shows exactly that."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load_script

from msflow.train.loop import train
from runs import tiny_config


def test_report_of_a_real_run_is_what_the_run_wrote(tmp_path: Path) -> None:
    bench = load_script("budget_runs")
    cfg = tiny_config(tmp_path / "run", "train.steps=4", "train.eval_every=2", "train.num_samples=0")
    result = train(cfg)
    r = bench.collect(tmp_path / "run")
    assert (r["config"], r["steps"], r["test_bpd"]) == (cfg.name, 4, result["bpd"])
    assert r["images"] == result["n"] and r["diverged"] == result["diverged"] == 0
    assert [p["step"] for p in r["curve"]] == [2, 4] and r["curve"][-1]["test_bpd"] == result["bpd"]
    data = {"machine": bench.machine(), "note": "", "runs": {"tiny Glow": r}}
    row = bench.markdown_table(json.loads(json.dumps(data))).splitlines()[2]
    assert row.startswith(f"| tiny Glow | `{cfg.name}` | 4 |") and f"{result['bpd']:.4f} +- " in row
