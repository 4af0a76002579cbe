"""Test bits/dim after the same training budget: msflow's Glow against normflows' and FrEIA's.

Each contestant (the Glows of ``peers.py``: same levels, steps and widths, built with each
library's own API) trains on MNIST-5k for the same budget of seconds in a fresh process with the
same threads, the same seeded batches (batch 64, reshuffled every epoch), the same dequantization
``v = (x + u)/256 - 1/2`` and the same optimizer (Adam, lr 1e-3, a short linear warm-up, gradient
clipping at 50; a step with a non-finite loss or gradient is skipped for everyone alike). Then its
test bits/dim are computed in float32 on the 1000 test digits with one seeded dequantization draw::

    bpd = -(log p(v) - D log 256) / (D log 2),   D = 784

so a library that runs more steps in the budget, or learns more per step, ends lower.

Usage::

    python benchmarks/equal_budget.py                        # 600 s each: msflow (auto precision), normflows, freia
    python benchmarks/equal_budget.py --specs msflow msflow[float32] normflows freia
    python benchmarks/equal_budget.py --quick                # 60 s each
    python benchmarks/equal_budget.py --clock cpu            # budget in process CPU seconds / threads

``msflow`` trains with ``train.precision: auto`` (bf16-mixed subnets where the CPU multiplies
bf16 natively, as on this project's machine); ``msflow[float32]`` pins float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _memory  # noqa: E402  (sibling scripts, not a package)
import peers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPECS = ("msflow", "normflows", "freia")


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """What every contestant gets: the same model size, data, optimizer and seconds."""

    budget: float = 600.0  # seconds of training per contestant
    clock: str = "wall"  # "wall", or "cpu": process CPU seconds divided by threads
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
    seed: int = 0


PRESETS = {
    "full": BudgetConfig(),
    "quick": BudgetConfig(budget=60.0),
    "smoke": BudgetConfig(budget=1.0, threads=1, steps=1, hidden=8, batch=16, max_test=32, log_every=0.2),
}


def _precision(spec: str) -> tuple[str, str]:
    """``msflow`` -> (msflow[<auto resolved>], resolved); ``msflow[float32]`` -> itself."""
    from msflow.train.precision import resolve_precision

    if spec == "msflow":
        spec = f"msflow[{resolve_precision('auto', torch.device('cpu'))}]"
    if spec == "msflow[float32]":
        return "msflow", "float32"
    return spec, spec[7:-1] if spec.startswith("msflow[") else "float32"


def train_one(cfg: BudgetConfig, spec: str) -> dict[str, Any]:
    """Train one contestant for ``cfg.budget`` seconds, then score the test set (runs in a worker)."""
    from msflow.data import get_dataset

    torch.set_num_threads(cfg.threads)
    name, precision = _precision(spec)
    bench = peers.make_config(
        "full", "mnist", steps=cfg.steps, hidden=cfg.hidden, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed
    )
    contestant = peers.build_contestant(name, bench)
    train, test = get_dataset("mnist5k", "train").images, get_dataset("mnist5k", "test").images[: cfg.max_test]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # every library's dequantization noise comes from torch's global stream
    contestant.initialize(train[torch.randperm(len(train), generator=gen)[: cfg.batch]])
    params = [p for p in contestant.model.parameters() if p.requires_grad]

    clock = (lambda: time.process_time() / cfg.threads) if cfg.clock == "cpu" else time.perf_counter
    start, last_log = clock(), -math.inf
    step, skipped, curve, order = 0, 0, [], torch.empty(0, dtype=torch.long)
    while (elapsed := clock() - start) < cfg.budget:
        if len(order) < cfg.batch:
            order = torch.randperm(len(train), generator=gen)
        idx, order = order[: cfg.batch], order[cfg.batch :]
        for group in contestant.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        contestant.optimizer.zero_grad(set_to_none=True)
        with contestant.precision():
            loss = contestant.bits_per_dim(train[idx]).mean()
        if torch.isfinite(loss):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if torch.isfinite(loss) and torch.isfinite(norm):
            contestant.optimizer.step()
        else:
            skipped += 1
        step += 1
        if elapsed - last_log >= cfg.log_every:
            curve.append({"seconds": elapsed, "step": step, "loss_bpd": loss.item()})
            last_log = elapsed
    seconds = clock() - start

    torch.manual_seed(cfg.seed + 1)  # the same test noise for every contestant
    with torch.inference_mode():  # float32, whatever the training precision
        bpd = torch.cat([contestant.bits_per_dim(x) for x in test.split(cfg.eval_batch)]).double()
    return {
        "spec": spec,
        "precision": precision,
        "params": contestant.num_params(),
        "steps": step,
        "skipped_steps": skipped,
        "train_seconds": seconds,
        "images_per_s": step * cfg.batch / seconds,
        "test_bpd": bpd.mean().item(),
        "test_bpd_stderr": (bpd.std() / math.sqrt(len(bpd))).item(),
        "curve": curve,
    }


def run_worker(cfg: BudgetConfig, spec: str) -> dict[str, Any]:
    """:func:`train_one` in a fresh interpreter, so no contestant inherits another's caches."""
    cmd = [sys.executable, __file__, "--_worker", spec, "--_config", json.dumps(dataclasses.asdict(cfg))]
    return _memory.run_worker(cmd, spec, env={"OMP_NUM_THREADS": str(cfg.threads)})


def markdown_table(report: dict[str, Any]) -> str:
    cfg, env = report["config"], report["environment"]
    lines = [
        f"MNIST-5k (4000 train / {cfg['max_test']} test digits), Glow 1x28x28, 2 levels x {cfg['steps']} steps, "
        f"hidden {cfg['hidden']}, batch {cfg['batch']}, Adam lr {cfg['lr']:g}; {cfg['budget']:g} s "
        f"({cfg['clock']} clock) of training each, {cfg['threads']} threads; {env['cpu']}; torch {env['torch']}",
        "",
        "| contestant | subnet precision | parameters | steps in budget | img/s | skipped steps | **test bits/dim** |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['spec']} | {r['precision']} | {r['params']:,} | {r['steps']} | {r['images_per_s']:.1f} "
            f"| {r['skipped_steps']} | **{r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f}** |"
        )
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in report["results"]:
        curve = r["curve"]
        label = f"{r['spec']} (test {r['test_bpd']:.3f})"
        ax.plot([c["seconds"] for c in curve], [c["loss_bpd"] for c in curve], label=label)
    ax.set(xlabel="training seconds", ylabel="training loss (bits/dim)", title="MNIST-5k Glow, equal budget")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="60 s per contestant")
    size.add_argument("--smoke", action="store_true", help="tiny models, 1 s each (tests)")
    p.add_argument("--specs", nargs="+", default=list(DEFAULT_SPECS), help="msflow, msflow[float32], normflows, freia")
    p.add_argument("--budget", type=float, help="seconds of training per contestant (default 600)")
    p.add_argument("--clock", choices=["wall", "cpu"], help="wall seconds, or CPU seconds / threads")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="training-loss curves against seconds (PNG)")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        print(json.dumps(train_one(BudgetConfig(**json.loads(args._config)), args._worker)))
        return 0
    for spec in args.specs:
        if spec not in ("msflow", "msflow[float32]", "msflow[bf16-mixed]", *peers.PEERS):
            p.error(
                f"unknown contestant {spec!r}; choose from msflow, msflow[float32], msflow[bf16-mixed], "
                f"{', '.join(peers.PEERS)}"
            )
    cfg = PRESETS["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides = {"budget": args.budget, "clock": args.clock, "threads": args.threads}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    env = peers.environment("cpu") | {"loadavg_before": list(os.getloadavg())}
    results = []
    for spec in args.specs:
        print(f"training {spec} for {cfg.budget:g} s ...", file=sys.stderr, flush=True)
        results.append(run_worker(cfg, spec))
    env["loadavg_after"] = list(os.getloadavg())
    report = {"config": dataclasses.asdict(cfg), "environment": env, "results": results}
    print(markdown_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_curves(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
