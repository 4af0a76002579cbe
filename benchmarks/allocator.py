"""Page faults and step time with and without msflow's CPU allocator tuning (``msflow/_allocator.py``).

``msflow.tune_cpu_allocator()`` (called by the ``msflow`` command, ``msflow.train.train`` and, for
every benchmark, ``_memory.py``) asks glibc to keep freed heap memory (``mallopt``), so a batch
reuses the memory the previous one freed instead of faulting fresh, zero-filled pages in from the
kernel. The setting is process-wide, so the peers in the same process get it too. This script runs
the Glows of ``peers.py`` in two fresh processes, ``MSFLOW_TUNE_MALLOC=0`` and ``=1``, and reports
per batch the minor page faults (``getrusage``) and the median time of each phase. With
``--rounds N`` the two kinds of process alternate N times and each figure is the median over
the rounds (a process-to-process drift in machine speed then hits both alike)::

    python benchmarks/allocator.py                       # patches32 workload, eval/sample/train
    python benchmarks/allocator.py --workload mnist --json out.json
    python benchmarks/allocator.py --rounds 3            # untuned, tuned, untuned, ...
    python benchmarks/allocator.py --smoke               # tiny models (tests)

The faults are exact counts; the times are as noisy as the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _memory  # noqa: E402  (sibling scripts, not a package)
import peers  # noqa: E402

SPECS = ("msflow", "normflows", "freia")
PHASES = ("eval", "sample", "train")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(workload: str, preset: str, specs: list[str], phases: list[str], batches_per_phase: int) -> dict[str, Any]:
    """In this process: faults per batch and median seconds per batch of each (library, phase)."""
    cfg = peers.make_config(preset, workload)
    torch.set_num_threads(cfg.threads)
    batches = peers.make_batches(cfg)
    contestants = [peers.build_contestant(spec, cfg) for spec in specs]
    out: dict[str, Any] = {}
    for c in contestants:
        c.initialize(batches[0])
        for phase in phases:
            step = peers.STEPS[phase]
            for x in batches[:3]:  # warm-up: the heap grows to its working size
                step(c, x)
            faults, seconds = [], []
            for i in range(batches_per_phase):
                x = batches[i % len(batches)]
                f0, t0 = _faults(), time.perf_counter()
                step(c, x)
                seconds.append(time.perf_counter() - t0)
                faults.append(_faults() - f0)
            out[f"{c.name}/{phase}"] = {
                "faults_per_batch": statistics.mean(faults),
                "ms_per_batch": 1e3 * statistics.median(seconds),
            }
    return out


def run_worker(tuned: bool, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter with the tuning switched on or off."""
    cmd = [sys.executable, __file__, "--_worker", "--workload", args.workload, "--preset", args.preset]
    cmd += ["--specs", *args.specs, "--phases", *args.phases, "--batches", str(args.batches)]
    return _memory.run_worker(cmd, f"(tuned={tuned})", env={"MSFLOW_TUNE_MALLOC": "1" if tuned else "0"})


def markdown_table(report: dict[str, Any]) -> str:
    plain, tuned = report["untuned"], report["tuned"]
    lines = [
        f"{report['workload']} ({report['preset']}), {report['batches']} batches per phase after 3 warm-up, "
        f"median of {report['rounds']} process(es) per mode; "
        f"{report['environment']['cpu']}, torch {report['environment']['torch']}",
        "",
        "| library / phase | page faults per batch: untuned | tuned | ms per batch: untuned | tuned | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in plain:
        a, b = plain[key], tuned[key]
        lines.append(
            f"| {key} | {a['faults_per_batch']:,.0f} | {b['faults_per_batch']:,.0f} | {a['ms_per_batch']:.1f} "
            f"| {b['ms_per_batch']:.1f} | {a['ms_per_batch'] / b['ms_per_batch']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", default="patches32", choices=sorted(peers.WORKLOADS))
    p.add_argument("--smoke", action="store_true", help="tiny models, 2 batches (tests)")
    p.add_argument("--specs", nargs="+", default=list(SPECS))
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    p.add_argument("--batches", type=int, default=8, help="timed batches per phase")
    p.add_argument("--rounds", type=int, default=1, help="alternating untuned/tuned process pairs")
    p.add_argument("--json", type=Path)
    p.add_argument("--preset", default="full", help=argparse.SUPPRESS)
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(measure(args.workload, args.preset, args.specs, args.phases, args.batches)))
        return 0
    if args.smoke:
        args.preset, args.batches = "smoke", 2
    report = {
        "workload": args.workload,
        "preset": args.preset,
        "batches": args.batches,
        "environment": peers.environment("cpu"),
        "rounds": args.rounds,
    }
    runs: dict[str, list[dict[str, Any]]] = {"untuned": [], "tuned": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(run_worker(mode == "tuned", args))
    for mode, results in runs.items():
        report[mode] = {
            key: {field: statistics.median(r[key][field] for r in results) for field in results[0][key]}
            for key in results[0]
        }
    print(markdown_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
