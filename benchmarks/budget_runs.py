"""Collect finished `msflow train` runs of one budget into a JSON report, and its README table.

Each run is given as ``LABEL=RUN_FOLDER``. What is read is what the run wrote: its
``results.json`` (final test bits/dim over the whole test set, steps, training seconds on its
budget clock, images whose bits/dim diverged), its ``config.yaml`` (config name, model and its
options, the budget) and its ``metrics.jsonl`` (the evaluations during training, as a curve of
test bits/dim against budget seconds). Nothing is retyped, so the README table rendered from the
JSON (``scripts/render_tables.py``) shows exactly what the runs measured.

Example::

    OMP_NUM_THREADS=1 msflow train configs/mnist5k-glow.yaml train.max_seconds=600 train.budget_clock=cpu \\
        train.out=/tmp/measure/glow
    python benchmarks/budget_runs.py --json docs/results/tarflow-mnist5k.json \\
        --note "shared 2-core machine, OMP_NUM_THREADS=1" "Glow main job=/tmp/measure/glow"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import yaml


def collect(run: Path) -> dict[str, Any]:
    """What one finished run folder says about itself."""
    results = json.loads((run / "results.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    curve = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "test_bpd" in record and "train_seconds" in record:
            keys = ("step", "train_seconds", "test_bpd", "test_bpd_stderr")
            curve.append({k: record[k] for k in keys})
    train = config["train"]
    return {
        "config": config["name"],
        "model": config["model"],
        "budget_seconds": train["max_seconds"],
        "budget_clock": train["budget_clock"],
        "steps": results["steps"],
        "train_seconds": results["train_seconds"],
        "test_bpd": results["bpd"],
        "test_bpd_stderr": results["bpd_stderr"],
        "images": results["n"],
        "diverged": results.get("diverged", 0),
        "curve": curve,
    }


def machine() -> dict[str, Any]:
    """The CPU model, its bf16/AMX flags, and the thread setting the runs were given."""
    from msflow.train.precision import cpu_flags

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    flags = sorted(f for f in cpu_flags() if f in ("avx512_bf16", "amx_bf16", "amx_tile"))
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "bf16_flags": flags,
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def markdown_table(data: dict[str, Any]) -> str:
    """One row per run: steps, training seconds, final test bits/dim (whole test set)."""
    lines = [
        "| run | config | steps | training s (clock) | test bits/dim | images (diverged) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in data["runs"].items():
        seconds = f"{r['train_seconds']:.0f} of {r['budget_seconds']:g} ({r['budget_clock']})"
        bpd = f"{r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f}"
        lines.append(
            f"| {label} | `{r['config']}` | {r['steps']} | {seconds} | {bpd} | {r['images']} ({r['diverged']}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER, one per finished run")
    parser.add_argument("--json", type=Path, required=True, help="where the report goes")
    parser.add_argument("--note", default="", help="how the runs were made (load, threads), kept in the report")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        label, sep, folder = item.rpartition("=")
        if not sep:
            parser.error(f"{item!r}: give LABEL=RUN_FOLDER")
        runs[label] = collect(Path(folder))
    data = {"machine": machine(), "note": args.note, "runs": runs}
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(markdown_table(data))


if __name__ == "__main__":
    main()
