r"""MRCNF and RNODE on MNIST-5k: test bits/dim against CPU seconds for the choices that decide it.

Paper 000 claims that a multi-resolution CNF reaches the bits/dim of a one-resolution CNF in far
less time. Whether it does on a CPU depends first on choices the paper fixes: the objective
(maximum likelihood through the ODE, flow matching, flow matching then likelihood), the training
solver (adaptive ``bosh3`` or fixed-step ``rk4``), adjoint or direct gradients, width, batch,
RNODE's weights, the detail normaliser (``normalize_details``), and whether the levels train as
one job or as separate jobs side by side. This script trains one run per choice with ``msflow
train`` for the same CPU budget and records each run's test curve:

- every run is a subprocess ``msflow train CONFIG OVERRIDES train.max_seconds=B
  train.budget_clock=cpu``, one thread each, ``--jobs`` at a time (2: both cores busy, as a user
  running two jobs; the CPU clock keeps budgets fair when they share the machine);
- ``train.eval_seconds=B/points`` evaluates test bits/dim ``points`` times during training, on the
  first ``--eval-images`` test images (dopri5 at 1e-5, the model's evaluation solver); evaluation
  time is not counted in the budget;
- a trial whose levels train as separate jobs (``train.level=s``) splits the budget between its
  jobs (``shares``); its curve adds the jobs' per-level bits/dim at the same fraction of their
  budgets, weighted by each level's dimensions (eq. 11), against the sum of their CPU seconds;
- ``--final`` evaluates every finished run on the whole test set (all 1000 images; a
  level-parallel trial after ``msflow assemble``) and counts non-finite images.

Usage::

    python benchmarks/mrcnf_sweep.py --budget 240 --json docs/results/mrcnf-sweep.json
    python benchmarks/mrcnf_sweep.py --trials mrcnf2-fm-norm,rnode-fm --budget 1800 --final \
        --json docs/results/mrcnf-claim.json
    python benchmarks/mrcnf_sweep.py --plot docs/results/mrcnf-sweep.json docs/figures/mrcnf_sweep.png
    python benchmarks/mrcnf_sweep.py --smoke        # two tiny trials in seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _memory import cpu_name

from msflow._io import finite_json

FAST_RK4 = "{train: {method: rk4, step_size: 0.25}, eval: {method: dopri5, rtol: 1.0e-5, atol: 1.0e-5}}"


@dataclass(frozen=True)
class Trial:
    """One choice: a shipped config, its overrides, and how its levels are scheduled.

    ``shares`` empty: one job trains every level. Otherwise job ``s`` trains level ``s`` alone
    with ``shares[s]`` of the budget, all jobs at once.
    """

    label: str
    config: str
    overrides: tuple[str, ...] = ()
    shares: tuple[float, ...] = ()
    group: str = ""


def _fm(norm: bool) -> tuple[str, ...]:
    return ("train.objective=flow_matching", f"model.options.normalize_details={str(norm).lower()}")


TRIALS: dict[str, Trial] = {
    # Maximum likelihood, the paper's objective.
    "mrcnf2-ml": Trial(
        "MRCNF-2, likelihood: bosh3 1e-3, adjoint, 32 hidden, batch 64 (old default)",
        "mnist5k-mrcnf",
        ("train.objective=likelihood", "model.options.normalize_details=false"),
        group="likelihood",
    ),
    "mrcnf2-ml-rk4": Trial(
        "MRCNF-2, likelihood: rk4 h=0.25, direct, 64 hidden, batch 32",
        "mnist5k-mrcnf",
        (
            "train.objective=likelihood",
            f"model.options.solver={FAST_RK4}",
            "model.options.adjoint=false",
            "model.options.hidden=64",
            "train.batch_size=32",
            "model.options.normalize_details=false",
        ),
        group="likelihood",
    ),
    "mrcnf2-ml-rk4-norm": Trial(
        "MRCNF-2, likelihood as above + detail normaliser",
        "mnist5k-mrcnf",
        (
            "train.objective=likelihood",
            f"model.options.solver={FAST_RK4}",
            "model.options.adjoint=false",
            "model.options.hidden=64",
            "train.batch_size=32",
            "model.options.normalize_details=true",
        ),
        group="likelihood",
    ),
    "rnode-ml": Trial(
        "RNODE, likelihood: bosh3 1e-3, adjoint, 32 hidden, batch 64 (old default)",
        "mnist5k-rnode",
        ("train.objective=likelihood", "model.options.hidden=32", "model.options.steps=2"),
        group="likelihood",
    ),
    "rnode-ml-rk4": Trial(
        "RNODE, likelihood: rk4 h=0.25, direct, 64 hidden, batch 32",
        "mnist5k-rnode",
        (
            "train.objective=likelihood",
            f"model.options.solver={FAST_RK4}",
            "model.options.adjoint=false",
            "model.options.hidden=64",
            "train.batch_size=32",
        ),
        group="likelihood",
    ),
    "rnode-ml-rk4-noreg": Trial(
        "RNODE, likelihood as above, RNODE weights 0",
        "mnist5k-rnode",
        (
            "train.objective=likelihood",
            f"model.options.solver={FAST_RK4}",
            "model.options.adjoint=false",
            "model.options.hidden=64",
            "train.batch_size=32",
            "model.options.kinetic_weight=0",
            "model.options.jacobian_weight=0",
        ),
        group="likelihood",
    ),
    # Flow matching.
    "mrcnf2-fm": Trial("MRCNF-2, flow matching, no normaliser", "mnist5k-mrcnf", _fm(False), group="flow matching"),
    "mrcnf2-fm-norm": Trial(
        "MRCNF-2, flow matching + detail normaliser", "mnist5k-mrcnf", _fm(True), group="flow matching"
    ),
    "mrcnf2-fm-norm-h64": Trial(
        "MRCNF-2, flow matching + normaliser, 64 hidden",
        "mnist5k-mrcnf",
        (*_fm(True), "model.options.hidden=64"),
        group="flow matching",
    ),
    "mrcnf2-fm-norm-b256": Trial(
        "MRCNF-2, flow matching + normaliser, batch 256",
        "mnist5k-mrcnf",
        (*_fm(True), "train.batch_size=256"),
        group="flow matching",
    ),
    "mrcnf2-fm-norm-fp32": Trial(
        "MRCNF-2, flow matching + normaliser, float32 (no bf16 autocast)",
        "mnist5k-mrcnf",
        (*_fm(True), "train.precision=float32"),
        group="flow matching",
    ),
    "mrcnf2-fm-norm-levels": Trial(
        "MRCNF-2, flow matching + normaliser, levels as 2 jobs (2/3, 1/3)",
        "mnist5k-mrcnf",
        _fm(True),
        shares=(2 / 3, 1 / 3),
        group="flow matching",
    ),
    "mrcnf2-fm-then-ml": Trial(
        "MRCNF-2, flow matching + normaliser, then likelihood (last 20%)",
        "mnist5k-mrcnf",
        (
            "train.objective=flow_matching_then_likelihood",
            "model.options.normalize_details=true",
            f"model.options.solver={FAST_RK4}",
            "model.options.adjoint=false",
        ),
        group="flow matching",
    ),
    "mrcnf3-fm-norm": Trial(
        "MRCNF-3 (28, 14, 7), flow matching + normaliser",
        "mnist5k-mrcnf",
        (*_fm(True), "model.options.resolutions=3"),
        group="flow matching",
    ),
    "rnode-fm": Trial(
        "RNODE (1 resolution), flow matching",
        "mnist5k-rnode",
        ("train.objective=flow_matching",),
        group="flow matching",
    ),
    # The claim (paper 000): each model with its best settings, the shipped configs.
    "claim-mrcnf2": Trial("MRCNF-2 (28, 14), configs/mnist5k-mrcnf.yaml", "mnist5k-mrcnf", group="claim"),
    "claim-mrcnf3": Trial(
        "MRCNF-3 (28, 14, 7), configs/mnist5k-mrcnf.yaml + resolutions=3, 25 hidden (44.2k parameters, as MRCNF-2)",
        "mnist5k-mrcnf",
        ("model.options.resolutions=3", "model.options.hidden=25"),
        group="claim",
    ),
    "claim-rnode": Trial("RNODE (28), configs/mnist5k-rnode.yaml", "mnist5k-rnode", group="claim"),
    "rnode-fm-h64": Trial(
        "RNODE (1 resolution), flow matching, 64 hidden",
        "mnist5k-rnode",
        ("train.objective=flow_matching", "model.options.hidden=64"),
        group="flow matching",
    ),
}

SMOKE_TRIALS = {
    "smoke-fm": Trial(
        "tiny 2-resolution, flow matching + normaliser",
        "mnist5k-mrcnf",
        (
            *_fm(True),
            "model.options.hidden=4",
            "data.downsample=2",
            "model.options.image_shape=[1,14,14]",
            "train.batch_size=8",
        ),
    ),
    "smoke-levels": Trial(
        "tiny 2-resolution, levels as 2 jobs",
        "mnist5k-mrcnf",
        (
            *_fm(True),
            "model.options.hidden=4",
            "data.downsample=2",
            "model.options.image_shape=[1,14,14]",
            "train.batch_size=8",
        ),
        shares=(0.5, 0.5),
    ),
}


@dataclass
class Job:
    """One ``msflow train`` process of a trial."""

    trial: str
    out: Path
    argv: list[str]
    level: int | None
    process: subprocess.Popen | None = None
    log: Any = None
    started: float = 0.0
    wall: float = 0.0
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _jobs(name: str, trial: Trial, budget: float, points: int, eval_images: int, root: Path) -> list[Job]:
    shares = trial.shares or (1.0,)
    jobs = []
    for s, share in enumerate(shares):
        seconds = budget * share
        level = s if trial.shares else None
        out = root / name if level is None else root / f"{name}-level{s}"
        argv = [sys.executable, "-m", "msflow", "train", trial.config, *trial.overrides]
        argv += [f"train.max_seconds={seconds:g}", "train.budget_clock=cpu", f"train.eval_seconds={seconds / points:g}"]
        argv += [f"train.eval_images={eval_images}", "train.eval_every=0", "train.num_samples=0"]
        argv += ["train.progress=false"]
        argv += ["train.eval_batch_size=100", "train.log_every=50", "train.checkpoint_every=1000"]
        argv += [] if level is None else [f"train.level={level}"]
        jobs.append(Job(name, out, [*argv, "--out", str(out)], level))
    return jobs


def _run_all(jobs: list[Job], parallel: int, threads: int) -> None:
    """Run ``jobs`` ``parallel`` at a time, ``threads`` threads each; a trial's jobs start together."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.out.parent.mkdir(parents=True, exist_ok=True)
            job.log = open(job.out.parent / f"{job.out.name}.log", "w")  # noqa: SIM115
            job.started = time.perf_counter()
            job.process = subprocess.Popen(job.argv, stdout=job.log, stderr=subprocess.STDOUT, env=env)
            running.append(job)
            print(f"started {job.out.name}", flush=True)
        time.sleep(2)
        for job in [j for j in running if j.process.poll() is not None]:
            job.returncode, job.wall = job.process.returncode, time.perf_counter() - job.started
            job.log.close()
            running.remove(job)
            print(f"finished {job.out.name}: exit {job.returncode} after {job.wall:.0f} s", flush=True)


def _curve(run: Path) -> list[dict[str, float]]:
    """The run's test evaluations: ``[{train_seconds, step, test_bpd, test_bpd_stderr}]`` in order."""
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "test_bpd" in record and "train_seconds" in record:
            keys = ("train_seconds", "step", "test_bpd", "test_bpd_stderr")
            points.append({k: record[k] for k in keys})
    # A run resumed or ended at an evaluated step has two records of that step: keep the last.
    last = {p["step"]: p for p in points}
    return sorted(last.values(), key=lambda p: p["step"])


def _step_stats(run: Path) -> dict[str, float]:
    """Steps, CPU seconds per step and mean NFE per logged step of a finished run."""
    result = json.loads((run / "results.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    nfe = [r["nfe"] for r in records if "nfe" in r]
    steps = result["steps"]
    return {
        "steps": steps,
        "cpu_s_per_step": result["train_seconds"] / max(steps, 1),
        "nfe_per_step": sum(nfe) / len(nfe) if nfe else 0.0,
        "report_wall_seconds": result.get("report_wall_seconds"),
    }


def _level_dims(trial: Trial) -> list[int]:
    import yaml

    from msflow.models import create_model
    from msflow.train.config import apply_overrides, config_from_dict

    path = Path(__file__).resolve().parent.parent / "configs" / f"{trial.config}.yaml"
    cfg = apply_overrides(config_from_dict(yaml.safe_load(path.read_text())), list(trial.overrides))
    return create_model(cfg.model.name, **cfg.model.options).level_dims()


def _combine(name: str, trial: Trial, jobs: list[Job]) -> dict[str, Any]:
    """A trial's record: its curve (levels added up for a level-parallel trial) and step statistics."""
    if not trial.shares:
        (job,) = jobs
        return {"curve": _curve(job.out), "jobs": {job.out.name: _step_stats(job.out)}}
    dims = _level_dims(trial)
    curves = [_curve(job.out) for job in jobs]
    n = min(len(c) for c in curves)
    combined = []
    for k in range(n):
        points = [c[k] for c in curves]
        bpd = sum(p["test_bpd"] * dims[j.level] for p, j in zip(points, jobs, strict=True)) / sum(dims)
        var = sum((p["test_bpd_stderr"] * dims[j.level]) ** 2 for p, j in zip(points, jobs, strict=True))
        combined.append(
            {
                "train_seconds": sum(p["train_seconds"] for p in points),
                "step": [p["step"] for p in points],
                "test_bpd": bpd,
                "test_bpd_stderr": math.sqrt(var) / sum(dims),
            }
        )
    return {"curve": combined, "jobs": {j.out.name: _step_stats(j.out) for j in jobs}, "level_dims": dims}


def _final_eval(name: str, trial: Trial, jobs: list[Job], root: Path) -> dict[str, Any]:
    """Whole-test-set bits/dim of the finished trial (assembled first when its levels ran apart)."""
    import torch

    from msflow.runs import load_data, load_run
    from msflow.train.evaluate import dataset_level_bits_per_dim
    from msflow.transforms.cnf import cnf_blocks

    run = jobs[0].out
    if trial.shares:
        run = root / f"{name}-assembled"
        argv = [sys.executable, "-m", "msflow", "assemble", *(str(j.out) for j in jobs), "--out", str(run), "--no-eval"]
        subprocess.run(argv, check=True)
    started = time.perf_counter()
    model, cfg, _ = load_run(run, "cpu")
    test = load_data(cfg, "test")
    blocks = [cnf_blocks(level) for level in model.levels]
    for block in (b for level in blocks for b in level):
        block.reset_nfe()
    totals, levels = dataset_level_bits_per_dim(model, test, 100, cfg.train.seed, progress=True)
    finite = torch.isfinite(totals) & (totals < 1e3)
    batches = math.ceil(len(test) / 100)
    return {
        "run": str(run),
        "test_bpd": totals.mean().item(),
        "test_bpd_stderr": (totals.std() / math.sqrt(len(totals))).item(),
        "level_bpd": levels.mean(0).tolist(),
        "finite_images": int(finite.sum()),
        "images": len(totals),
        "eval_wall_seconds": time.perf_counter() - started,
        "eval_nfe_per_batch_by_level": [sum(b.total_nfe for b in level) / batches for level in blocks],
    }


def report_cost(run: Path) -> dict[str, Any]:
    """What the end of ``msflow train`` costs for a finished run: the final evaluation (every test
    image, the config's evaluation batch) and the sample grids (the config's ``num_samples`` at its
    temperatures), in CPU and wall seconds, against the run's training CPU seconds."""
    import tempfile

    import yaml

    from msflow.runs import load_data, load_run
    from msflow.train.config import config_from_dict
    from msflow.train.evaluate import evaluate, sample_grids
    from msflow.transforms.cnf import cnf_blocks

    model, cfg, _ = load_run(run, "cpu")
    # The shipped config's evaluation batch and sample grids, not the sweep's overrides of them.
    shipped = Path(__file__).resolve().parent.parent / "configs" / f"{cfg.name}.yaml"
    t = config_from_dict(yaml.safe_load(shipped.read_text())).train
    test = load_data(cfg, "test")
    blocks = [cnf_blocks(level) for level in model.levels]
    for block in (b for level in blocks for b in level):
        block.reset_nfe()
    clocks = [(time.process_time(), time.perf_counter())]
    result = evaluate(model, test, t.eval_batch_size, seed=t.seed, progress=True)
    clocks.append((time.process_time(), time.perf_counter()))
    batches = math.ceil(len(test) / t.eval_batch_size)
    nfe = [sum(b.total_nfe for b in level) / batches for level in blocks]
    with tempfile.TemporaryDirectory() as folder:
        sample_grids(model, Path(folder), t.num_samples, t.temperatures, t.seed, "final", progress=True)
    clocks.append((time.process_time(), time.perf_counter()))
    trained = json.loads((run / "results.json").read_text())["train_seconds"]
    (c0, w0), (c1, w1), (c2, w2) = clocks
    return {
        "run": str(run),
        "test_bpd": result["bpd"],
        "train_cpu_seconds": trained,
        "eval_cpu_seconds": c1 - c0,
        "eval_wall_seconds": w1 - w0,
        "sample_cpu_seconds": c2 - c1,
        "sample_wall_seconds": w2 - w1,
        "eval_batch_size": t.eval_batch_size,
        "eval_nfe_per_batch_by_level": nfe,
        "num_samples": t.num_samples,
        "temperatures": list(t.temperatures),
        "report_cpu_share_of_budget": (c2 - c0) / trained,
    }


def plot(report_path: Path, out: Path) -> Path:
    """Test bits/dim against CPU seconds, one curve per trial (dots: evaluations)."""
    from matplotlib.figure import Figure

    report = json.loads(report_path.read_text())
    groups = sorted({t.get("group", "") for t in report["trials"].values()})
    fig = Figure(figsize=(7 * len(groups), 5), dpi=100, layout="constrained")
    for i, group in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        top = 0.0
        for trial in report["trials"].values():
            if trial.get("group", "") != group or not trial["curve"]:
                continue
            xs = [p["train_seconds"] for p in trial["curve"]]
            ys = [min(p["test_bpd"] if p["test_bpd"] is not None else math.inf, 12.0) for p in trial["curve"]]
            top = max(top, *ys)  # diverged runs are drawn at 12
            ax.plot(xs, ys, "o-", ms=3, lw=1.2, label=trial["label"])
        ax.set(
            xlabel="training CPU seconds (1 thread)",
            ylabel=f"test bits/dim ({report['eval_images']} images)",
            title=f"MNIST-5k, {group or 'all'}",
            ylim=(0.8, top + 0.3),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", default="all", help="comma-separated trial names (default: all)")
    parser.add_argument("--budget", type=float, default=240.0, help="CPU seconds per trial")
    parser.add_argument("--points", type=int, default=4, help="evaluations per run")
    parser.add_argument("--eval-images", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--runs", default="runs/mrcnf-sweep", help="folder of the trials' runs")
    parser.add_argument("--final", action="store_true", help="evaluate each trial on the whole test set")
    parser.add_argument("--json", help="write the report here (trials already in it are kept unless rerun)")
    parser.add_argument("--collect", action="store_true", help="do not train: read the trials' finished runs")
    parser.add_argument("--plot", nargs=2, metavar=("REPORT", "PNG"), help="only draw a report's curves")
    parser.add_argument("--smoke", action="store_true", help="two tiny trials, seconds")
    parser.add_argument("--report-cost", nargs="+", metavar="RUN", help="only time the end of training of runs")
    args = parser.parse_args(argv)
    if args.report_cost:
        costs = [report_cost(Path(run)) for run in args.report_cost]
        print(json.dumps(finite_json(costs), indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(finite_json(costs), indent=2))
        return
    if args.plot:
        print(plot(Path(args.plot[0]), Path(args.plot[1])))
        return
    table = SMOKE_TRIALS if args.smoke else TRIALS
    names = list(table) if args.trials == "all" else args.trials.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown trial(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    budget = 4.0 if args.smoke else args.budget
    root = Path(args.runs)
    jobs = {n: _jobs(n, table[n], budget, args.points, args.eval_images, root) for n in names}
    if args.collect:
        for job in (j for n in names for j in jobs[n]):
            job.returncode = 0 if (job.out / "results.json").is_file() else 1
    else:
        _run_all([j for n in names for j in jobs[n]], args.jobs, args.threads)
    failed = [j.out.name for n in names for j in jobs[n] if j.returncode != 0]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (logs beside the runs in {root})")
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "budget_cpu_seconds": budget,
        "eval_images": args.eval_images,
        "threads_per_job": args.threads,
        "jobs_at_once": args.jobs,
        "trials": {},
    }
    if args.json and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text())
        if earlier.get("budget_cpu_seconds") == budget and earlier.get("eval_images") == args.eval_images:
            report["trials"] = earlier["trials"]
    for n in names:
        trial = table[n]
        record = {
            "label": trial.label,
            "group": trial.group,
            "config": trial.config,
            "overrides": list(trial.overrides),
            "shares": list(trial.shares),
            **_combine(n, trial, jobs[n]),
        }
        if args.final:
            record["final"] = _final_eval(n, trial, jobs[n], root)
        report["trials"][n] = record
        last = record["curve"][-1]["test_bpd"] if record["curve"] else float("nan")
        print(
            f"{n}: last test bits/dim {last:.4f}"
            + (f", whole test set {record['final']['test_bpd']:.4f}" if args.final else "")
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite_json(report), indent=2))


if __name__ == "__main__":
    main()
