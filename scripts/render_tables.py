"""Render README tables from committed JSON results, so no figure in the README is typed by hand.

A table in README.md sits between two markers naming its JSON file:

    <!-- table: docs/results/task-sr2.json -->
    ...generated markdown...
    <!-- /table -->

The JSON is what ``msflow task-table ... --json FILE`` writes, or the report of one of the
benchmark scripts, recognised by its keys (:data:`BENCHMARK_REPORTS`): ``peers.py``,
``kernel_bounds.py``, ``equal_budget.py``, ``compiled.py``, ``allocator.py``, ``cnf_peers.py``,
``scaling.py``, ``mrcnf_sweep.py``, ``budget_runs.py``, ``tarflow_jacobi.py``,
``tarflow_denoise.py``. A marker may name a *view* after the path: `` printed -->`` takes the table
the script prints (its ``markdown_table``), `` memory -->`` a peers report's memory table; without
one a script's ``summary_table`` is used where it has one. ``python scripts/render_tables.py``
rewrites every such block in README.md and benchmarks/README.md; ``--check`` only reports blocks
that differ (tests/test_readme_tables.py runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<path>\S+)(?: (?P<view>[a-z_]+))? -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]


def render_sweep(data: dict) -> str:
    """The markdown table of a ``benchmarks/mrcnf_sweep.py`` report: one row per trial."""
    budget, images = data["budget_cpu_seconds"], data["eval_images"]
    final = any("final" in t for t in data["trials"].values())
    head = ["trial", "steps", "CPU s per step", "NFE per step", f"test bits/dim at {budget:g} CPU s ({images} images)"]
    if final:
        head += ["whole test set (1000 images)", "diverged images", "eval NFE per batch of 100, by level"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for trial in data["trials"].values():
        jobs = list(trial["jobs"].values())
        steps = " + ".join(str(j["steps"]) for j in jobs)
        per_step = " / ".join(f"{j['cpu_s_per_step']:.3f}" for j in jobs)
        nfe = " / ".join(f"{j['nfe_per_step']:.0f}" for j in jobs)
        value = trial["curve"][-1]["test_bpd"] if trial["curve"] else None
        if value is None:
            bpd = "n/a (non-finite)"
        else:
            bpd = f"{value:.4f}" if value < 1e3 else f"{value:.3g} (diverged)"
        row = [trial["label"], steps, per_step, nfe, bpd]
        if final:
            f = trial["final"]
            nfe = " / ".join(f"{n:.0f}" for n in f.get("eval_nfe_per_batch_by_level", [])) or "not recorded"
            row += [
                f"**{f['test_bpd']:.4f} +- {f['test_bpd_stderr']:.4f}**",
                str(f["images"] - f["finite_images"]),
                nfe,
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def render(path: Path) -> str:
    """The markdown table of one JSON file: ``task-table``'s, or ``mrcnf_sweep.py``'s."""
    from msflow.analysis.task_eval import Row, format_rows

    data = json.loads(path.read_text())
    if "trials" in data:
        return render_sweep(data)
    rows = [Row(**{k: math.nan if v is None else v for k, v in r.items()}) for r in data["rows"]]
    what = f"x{data['scale']} super-resolution" if data["task"] == "superres" else data["task"]
    title = f"{what}, {len(data['photos'])} held-out photos ({', '.join(data['photos'])}), whole, means per photo:"
    return format_rows(rows, title) + "\n"


def _benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (a folder of scripts, not a package; its siblings importable)."""
    folder = ROOT / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"msflow_bench_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# (the script that wrote a report, a test on its top-level keys, and its view -> function name)
BENCHMARK_REPORTS: list[tuple[str, Callable[[dict], bool], dict[str | None, str]]] = [
    ("cnf_peers", lambda d: "throughput" in d and "nfe" in d, {None: "summary_table", "printed": "markdown_table"}),
    (
        "peers_report",
        lambda d: "workloads" in d and "ratios" in next(iter(d["workloads"].values())),
        {None: "summary_table", "memory": "memory_table", "printed": "markdown_table"},
    ),
    (
        "kernel_bounds",
        lambda d: "workloads" in d and "rows" in next(iter(d["workloads"].values())),
        {None: "markdown_table", "printed": "markdown_table"},
    ),
    ("equal_budget", lambda d: "summary" in d and "seeds" in d, {None: "markdown_table", "printed": "markdown_table"}),
    ("budget_runs", lambda d: "runs" in d and "note" in d, {None: "markdown_table"}),
    ("tarflow_jacobi", lambda d: "jacobi_sweeps" in d, {None: "markdown_table"}),
    ("tarflow_denoise", lambda d: "noise_std" in d and "denoise=True" in d, {None: "markdown_table"}),
    ("compiled", lambda d: "results" in d and "repeats" in d, {None: "markdown_table", "printed": "markdown_table"}),
    ("allocator", lambda d: "untuned" in d and "tuned" in d, {None: "markdown_table", "printed": "markdown_table"}),
    ("scaling", lambda d: "records" in d and "models" in d, {None: "markdown_table", "printed": "markdown_table"}),
]


def render_block(block: re.Match) -> str:
    """The markdown of one marked block: a benchmark report's table (in the marker's view), or :func:`render`'s."""
    path = ROOT / block["path"]
    data = json.loads(path.read_text())
    for script, matches, views in BENCHMARK_REPORTS:
        if matches(data):
            if block["view"] not in views:
                raise SystemExit(f"{path}: no view {block['view']!r} for a {script} report; use one of {list(views)}")
            return getattr(_benchmark(script), views[block["view"]])(data) + "\n"
    if block["view"] is not None:
        raise SystemExit(f"{path}: views are for benchmark reports, not {block['view']!r}")
    return render(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a README table differs from its JSON")
    parser.add_argument("--readme", type=Path, nargs="+", default=READMES, help="default: both READMEs")
    args = parser.parse_args()
    stale = []
    for readme in args.readme:
        text = readme.read_text()
        stale += [(readme, m["path"]) for m in BLOCK.finditer(text) if m["body"] != render_block(m)]
        if not args.check:
            readme.write_text(BLOCK.sub(lambda m: m[1] + render_block(m) + m[5], text))
    if args.check:
        for readme, path in stale:
            print(f"{readme}: the table of {path} differs from its JSON: run python scripts/render_tables.py")
        return 1 if stale else 0
    print(f"rendered {len(stale)} changed table(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
