"""Test bits/dim after the same training budget: msflow's Glow against normflows' and FrEIA's.

Each contestant (a Glow of ``peers.py``: same levels, steps and widths, built with each library's
own API; any ``peers.py`` spec, e.g. ``normflows+cl`` for channels-last) trains on MNIST-5k from
``--seeds`` training seeds (the seed sets the initial weights, the batch order and the
dequantization noise) for the same budget of seconds, with the same threads, batch 64 reshuffled
every epoch, the same dequantization ``v = (x + u)/256 - 1/2`` and the same optimizer (Adam, lr
1e-3, a short linear warm-up, gradient clipping at 50; a step with a non-finite loss or gradient is
skipped for everyone alike). Then its test bits/dim are computed in float32 on the 1000 test
digits with one seeded dequantization draw (the same for every run)::

    bpd = -(log p(v) - D log 256) / (D log 2),   D = 784

so a library that runs more steps in the budget, or learns more per step, ends lower.

**Fair on a shared machine**: every (contestant, seed) run lives in one process and they take
turns in short slices (``--slice`` seconds of their own clock each, the order reversed every
round), so a change in machine load falls on all of them alike; each run's budget is counted on
its own clock (``--clock cpu``: the process CPU seconds it used divided by the threads; ``wall``:
its wall seconds). Both CPU and wall seconds are recorded per run, with the load average. The
report gives each contestant's mean test bits/dim over the seeds with its spread (sample
standard deviation and range over seeds).

Usage::

    python benchmarks/equal_budget.py --budget 600 --seeds 0 1 2 --clock cpu --json r.json   # 3 x 3 x 600 s: ~95 min
    python benchmarks/equal_budget.py --budget 120 --seeds 0 1 2 --clock cpu                 # reduced, ~20 min
    python benchmarks/equal_budget.py --specs msflow normflows freia                         # msflow: auto precision
    python benchmarks/equal_budget.py --smoke                                                # tiny, seconds (tests)

``msflow`` trains with ``train.precision: auto`` (bf16-mixed subnets where the CPU multiplies
bf16 natively); ``msflow[float32]`` pins float32; ``normflows[bf16-mixed]`` runs a peer under
bf16 autocast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _memory  # noqa: E402, F401  (sibling scripts, not a package; tunes the allocator as msflow does)
import peers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = ("msflow[float32]", "normflows", "freia")


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """What every contestant gets: the same model size, data, optimizer and seconds."""

    budget: float = 600.0  # seconds of training per run (contestant x seed)
    clock: str = "cpu"  # "cpu": process CPU seconds divided by threads, or "wall"
    slice: float = 10.0  # seconds of a run's own clock per turn
    threads: int = 2
    steps: int = 8
    hidden: int = 128
    batch: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 50.0
    eval_batch: int = 500
    max_test: int = 1000
    log_every: float = 10.0  # seconds between loss records
    test_seed: int = 1000  # the dequantization draw of the test set, the same for every run


PRESETS = {
    "full": BudgetConfig(),
    "quick": BudgetConfig(budget=60.0, slice=5.0),
    "smoke": BudgetConfig(budget=1.0, slice=0.3, threads=1, steps=1, hidden=8, batch=16, max_test=32, log_every=0.2),
}


def _precision(spec: str) -> tuple[str, str]:
    """``msflow`` -> (msflow[<auto resolved>] as a peers.py spec, resolved precision); others: (spec, precision)."""
    from msflow.train.precision import resolve_precision

    if spec == "msflow":
        resolved = resolve_precision("auto", torch.device("cpu"))
        return peers.spec_name("msflow", resolved), resolved
    name = spec.replace("msflow[float32]", "msflow")
    return name, peers.parse_spec(name)[1]


@dataclasses.dataclass
class Run:
    """One contestant from one seed: its model, optimizer, data order and clocks."""

    spec: str
    seed: int
    precision: str
    contestant: peers.Contestant
    gen: torch.Generator
    rng_state: torch.Tensor
    order: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    step: int = 0
    skipped: int = 0
    clock_s: float = 0.0  # on the budget's clock
    cpu_s: float = 0.0
    wall_s: float = 0.0
    slices: int = 0
    curve: list[dict[str, float]] = dataclasses.field(default_factory=list)
    last_log: float = -math.inf


def make_run(cfg: BudgetConfig, spec: str, seed: int, train: torch.Tensor) -> Run:
    """Build ``spec`` from ``seed`` and run its ActNorm initialisation on a seeded batch."""
    name, precision = _precision(spec)
    bench = peers.make_config(
        "full", "mnist", steps=cfg.steps, hidden=cfg.hidden, batch=cfg.batch, lr=cfg.lr, seed=seed
    )
    contestant = peers.build_contestant(name, bench)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # every library's dequantization noise comes from torch's global stream
    contestant.initialize(train[torch.randperm(len(train), generator=gen)[: cfg.batch]])
    return Run(spec, seed, precision, contestant, gen, torch.get_rng_state())


def train_slice(cfg: BudgetConfig, run: Run, train: torch.Tensor) -> None:
    """Train ``run`` for ``cfg.slice`` seconds of its clock, or until its budget is spent."""
    c = run.contestant
    params = [p for p in c.model.parameters() if p.requires_grad]
    torch.set_rng_state(run.rng_state)  # each run draws its own noise stream, whatever the turns
    wall0, cpu0 = time.perf_counter(), time.process_time()

    def used() -> float:
        cpu = (time.process_time() - cpu0) / cfg.threads
        return cpu if cfg.clock == "cpu" else time.perf_counter() - wall0

    while used() < cfg.slice and run.clock_s + used() < cfg.budget:
        if len(run.order) < cfg.batch:
            run.order = torch.randperm(len(train), generator=run.gen)
        idx, run.order = run.order[: cfg.batch], run.order[cfg.batch :]
        for group in c.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (run.step + 1) / cfg.warmup_steps)
        c.optimizer.zero_grad(set_to_none=True)
        with c.precision():
            loss = c.bits_per_dim(train[idx]).mean()
        if torch.isfinite(loss):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            c.optimizer.step()
        else:
            run.skipped += 1
        run.step += 1
        elapsed = run.clock_s + used()
        if elapsed - run.last_log >= cfg.log_every:
            run.curve.append({"seconds": elapsed, "step": run.step, "loss_bpd": loss.item()})
            run.last_log = elapsed
    run.clock_s += used()
    run.cpu_s += time.process_time() - cpu0
    run.wall_s += time.perf_counter() - wall0
    run.slices += 1
    run.rng_state = torch.get_rng_state()


def evaluate(cfg: BudgetConfig, run: Run, test: torch.Tensor) -> dict[str, Any]:
    """Test bits/dim in float32 (whatever the training precision), the same noise for every run."""
    torch.manual_seed(cfg.test_seed)
    with torch.inference_mode():
        bpd = torch.cat([run.contestant.bits_per_dim(x) for x in test.split(cfg.eval_batch)]).double()
    return {
        "spec": run.spec,
        "seed": run.seed,
        "precision": run.precision,
        "params": run.contestant.num_params(),
        "steps": run.step,
        "skipped_steps": run.skipped,
        "train_seconds": run.clock_s,
        "cpu_seconds": run.cpu_s,
        "wall_seconds": run.wall_s,
        "slices": run.slices,
        "images_per_s": run.step * cfg.batch / run.clock_s,
        "test_bpd": bpd.mean().item(),
        "test_bpd_stderr": (bpd.std() / math.sqrt(len(bpd))).item(),
        "curve": run.curve,
    }


def run_interleaved(cfg: BudgetConfig, specs: list[str], seeds: list[int]) -> tuple[list[dict[str, Any]], list]:
    """Every (spec, seed) run in turns of ``cfg.slice`` seconds until each has spent ``cfg.budget``.

    Returns the results (in ``specs`` x ``seeds`` order) and the load average after each round.
    """
    from msflow.data import get_dataset

    torch.set_num_threads(cfg.threads)
    train, test = get_dataset("mnist5k", "train").images, get_dataset("mnist5k", "test").images[: cfg.max_test]
    runs = [make_run(cfg, spec, seed, train) for seed in seeds for spec in specs]
    loads, rounds = [], 0
    while any(r.clock_s < cfg.budget for r in runs):
        for run in runs if rounds % 2 == 0 else runs[::-1]:
            if run.clock_s < cfg.budget:
                train_slice(cfg, run, train)
        rounds += 1
        loads.append(list(os.getloadavg()))
        done = sum(r.clock_s for r in runs) / (len(runs) * cfg.budget)
        print(f"round {rounds}: {100 * done:.0f} % of the budget, load {loads[-1][0]:.2f}", file=sys.stderr, flush=True)
    results = [evaluate(cfg, run, test) for run in runs]
    results.sort(key=lambda r: (specs.index(r["spec"]), seeds.index(r["seed"])))
    return results, loads


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per contestant: mean test bits/dim over seeds, its spread, and the mean steps and speed."""
    out: dict[str, dict[str, Any]] = {}
    for spec in dict.fromkeys(r["spec"] for r in results):
        rs = [r for r in results if r["spec"] == spec]
        bpd = [r["test_bpd"] for r in rs]
        out[spec] = {
            "precision": rs[0]["precision"],
            "params": rs[0]["params"],
            "seeds": [r["seed"] for r in rs],
            "test_bpd_mean": statistics.fmean(bpd),
            "test_bpd_std": statistics.stdev(bpd) if len(bpd) > 1 else 0.0,
            "test_bpd_min": min(bpd),
            "test_bpd_max": max(bpd),
            "steps_mean": statistics.fmean(r["steps"] for r in rs),
            "images_per_s_mean": statistics.fmean(r["images_per_s"] for r in rs),
            "cpu_seconds_mean": statistics.fmean(r["cpu_seconds"] for r in rs),
            "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in rs),
        }
    return out


def markdown_table(report: dict[str, Any]) -> str:
    """Per contestant: mean and spread over seeds; then every run."""
    cfg, env = report["config"], report["environment"]
    seeds = report["seeds"]
    reduced = "" if cfg["budget"] >= 600 else " (**reduced**: the issue's budget is 600 s)"
    loads = [l[0] for l in report.get("loadavg_rounds", [])]
    load = f"; load average {env['loadavg_before'][0]:.2f} -> {env['loadavg_after'][0]:.2f}" + (
        f" (range {min(loads):.2f}-{max(loads):.2f} over {len(loads)} rounds)" if loads else ""
    )
    lines = [
        f"MNIST-5k (4000 train / {cfg['max_test']} test digits), Glow 1x28x28, 2 levels x {cfg['steps']} steps, "
        f"hidden {cfg['hidden']}, batch {cfg['batch']}, Adam lr {cfg['lr']:g}; {cfg['budget']:g} s{reduced} "
        f"({cfg['clock']} clock) of training per run, {len(seeds)} seeds ({', '.join(map(str, seeds))}), runs taking "
        f"turns of {cfg['slice']:g} s in one process; {cfg['threads']} threads; {peers._hardware(env)}; "
        f"torch {env['torch']}{load}",
        "",
        "| contestant | precision | parameters | steps (mean) | img/s (mean) | CPU s / wall s per run (mean) "
        "| **test bits/dim, mean over seeds** | std over seeds | range over seeds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec, s in report["summary"].items():
        lines.append(
            f"| {spec} | {s['precision']} | {s['params']:,} | {s['steps_mean']:.0f} | {s['images_per_s_mean']:.1f} "
            f"| {s['cpu_seconds_mean']:.0f} / {s['wall_seconds_mean']:.0f} | **{s['test_bpd_mean']:.4f}** "
            f"| {s['test_bpd_std']:.4f} | {s['test_bpd_min']:.4f}-{s['test_bpd_max']:.4f} |"
        )
    lines += [
        "",
        "Every run (test bits/dim +- its standard error over the test digits):",
        "",
        "| contestant | seed | steps | skipped | CPU s | wall s | test bits/dim |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['spec']} | {r['seed']} | {r['steps']} | {r['skipped_steps']} | {r['cpu_seconds']:.0f} "
            f"| {r['wall_seconds']:.0f} | {r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f} |"
        )
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {}
    for r in report["results"]:
        curve = r["curve"]
        color = colors.setdefault(r["spec"], f"C{len(colors)}")
        label = f"{r['spec']} (mean test {report['summary'][r['spec']]['test_bpd_mean']:.3f})"
        first = r["seed"] == report["seeds"][0]
        xs, ys = [c["seconds"] for c in curve], [c["loss_bpd"] for c in curve]
        ax.plot(xs, ys, color=color, alpha=0.8, label=label if first else None)
    ax.set(xlabel=f"training seconds ({report['config']['clock']} clock)", ylabel="training loss (bits/dim)")
    ax.set_title("MNIST-5k Glow, equal budget, one line per seed")
    low, high = ax.get_ylim()
    if low < 4.0 < high:  # the first steps' losses would squash the rest of the curves
        ax.set_ylim(top=4.0)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="60 s per run")
    size.add_argument("--smoke", action="store_true", help="tiny models, 1 s each (tests)")
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="peers.py specs; msflow = auto precision")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--budget", type=float, help="seconds of training per run (default 600)")
    p.add_argument("--slice", type=float, help="seconds per turn (default 10)")
    p.add_argument("--clock", choices=["wall", "cpu"], help="CPU seconds / threads (default), or wall seconds")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="training-loss curves against seconds (PNG)")
    args = p.parse_args(argv)
    for spec in args.specs:
        try:
            _precision(spec)
        except ValueError as err:
            p.error(str(err))
    if len(set(args.specs)) != len(args.specs) or len(set(args.seeds)) != len(args.seeds):
        p.error("give each contestant and seed once")
    cfg = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides = {"budget": args.budget, "clock": args.clock, "threads": args.threads, "slice": args.slice}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    torch.set_num_threads(cfg.threads)
    env = peers.environment("cpu") | {"loadavg_before": list(os.getloadavg())}
    start = time.perf_counter()
    results, loads = run_interleaved(cfg, args.specs, args.seeds)
    env |= {"loadavg_after": list(os.getloadavg()), "wall_s": time.perf_counter() - start}
    report = {
        "config": dataclasses.asdict(cfg),
        "seeds": args.seeds,
        "environment": env,
        "loadavg_rounds": loads,
        "summary": summarize(results),
        "results": results,
    }
    print(markdown_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_curves(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
